/**
 * @module The REST surface of `RestClient` and the CLI (tinker-protocol.md §4.6): training runs,
 * checkpoints (list, delete, archive, publish, TTL), sessions; and the signed archive download.
 */
import { createReadStream, existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { create as createTar } from 'tar';
import { badRequest, gone, notFound } from '../http/errors.js';
import type { ArchiveSigner } from '../checkpoints/signing.js';
import { BillingUsageQuery, paging, PagingQuery, TtlBody } from '../protocol/schemas.js';
import type { Services } from '../services.js';
import type { CheckpointRow, RunRow } from '../store/index.js';
import { owner, type TypedApp } from './context.js';

const ARCHIVE_TTL_MS = 15 * 60 * 1000;

/** The files of a PEFT adapter folder: an archive, or an external checkpoint's signed URLs. */
const PEFT_FILES = ['adapter_config.json', 'adapter_model.safetensors'] as const;

/** ISO time of a stored timestamp; undefined for none, or for one out of the Date range (never throws). */
const iso = (ms: number | null | undefined): string | undefined => {
  if (ms === null || ms === undefined) return undefined;
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString();
};

/** The JSON `Checkpoint` of the protocol. */
export function checkpointJson(c: CheckpointRow): Record<string, unknown> {
  return {
    checkpoint_id: c.checkpointId,
    checkpoint_type: c.checkpointType,
    time: iso(c.createdAt),
    tinker_path: c.tinkerPath,
    size_bytes: c.sizeBytes,
    public: c.public,
    ...(c.expiresAt !== null ? { expires_at: iso(c.expiresAt) } : {}),
    ...(c.userMetadata !== null ? { user_metadata: c.userMetadata } : {}),
  };
}

/** Session metadata as the SDK validates it (`{str: str}`): other JSON values are sent as their JSON text. */
function stringValues(metadata: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]));
}

export function restRoutes(app: TypedApp, services: Services, signer: ArchiveSigner): void {
  const { store } = services;

  async function runJson(run: RunRow): Promise<Record<string, unknown>> {
    const checkpoints = await store.checkpoints.listForRun(run.modelId, run.owner);
    const last = (type: 'training' | 'sampler'): CheckpointRow | undefined => checkpoints.find((c) => c.checkpointType === type);
    const training = last('training');
    const sampler = last('sampler');
    return {
      training_run_id: run.modelId,
      base_model: run.baseModel,
      model_owner: run.owner,
      is_lora: true,
      corrupted: run.corrupted,
      lora_rank: run.loraRank,
      last_request_time: iso(run.lastRequestAt),
      user_metadata: run.userMetadata,
      ...(training ? { last_checkpoint: checkpointJson(training) } : {}),
      ...(sampler ? { last_sampler_checkpoint: checkpointJson(sampler) } : {}),
    };
  }

  app.get('/api/v1/training_runs', { schema: { querystring: PagingQuery } }, async (request) => {
    const { limit, offset } = paging(request.query, 20);
    const { runs, total } = await store.runs.list(owner(request), limit, offset);
    return { training_runs: await Promise.all(runs.map(runJson)), cursor: { offset, limit, total_count: total } };
  });

  app.get<{ Params: { modelId: string } }>('/api/v1/training_runs/:modelId', async (request) => {
    const run = await store.runs.get(request.params.modelId, owner(request));
    if (!run) throw notFound('training run', request.params.modelId);
    return runJson(run);
  });

  app.get<{ Params: { modelId: string } }>('/api/v1/training_runs/:modelId/checkpoints', async (request) => {
    const who = owner(request);
    const run = await store.runs.get(request.params.modelId, who);
    if (!run) throw notFound('training run', request.params.modelId);
    return { checkpoints: (await store.checkpoints.listForRun(run.modelId, who)).map(checkpointJson) };
  });

  app.get('/api/v1/checkpoints', { schema: { querystring: PagingQuery } }, async (request) => {
    const { limit, offset } = paging(request.query, 100);
    const { checkpoints, total } = await store.checkpoints.listForOwner(owner(request), limit, offset);
    return { checkpoints: checkpoints.map(checkpointJson), cursor: { offset, limit, total_count: total } };
  });

  /** Splits `weights/NAME[/action]` (checkpoint ids contain a slash). */
  function splitCheckpoint(rest: string): { checkpointId: string; action: string } {
    const parts = rest.split('/');
    if (parts.length < 2 || (parts[0] !== 'weights' && parts[0] !== 'sampler_weights' && parts[0] !== 'external_weights')) {
      throw badRequest(`invalid checkpoint id ${JSON.stringify(rest)}: expected weights/<name>, sampler_weights/<name> or external_weights/<name>`, 'invalid_checkpoint_id');
    }
    return { checkpointId: `${parts[0]}/${parts[1]}`, action: parts.slice(2).join('/') };
  }

  async function ownCheckpoint(modelId: string, checkpointId: string, who: string): Promise<CheckpointRow> {
    const checkpoint = await store.checkpoints.get(modelId, checkpointId, who);
    if (!checkpoint || checkpoint.owner !== who) throw notFound('checkpoint', `${modelId}/${checkpointId}`);
    return checkpoint;
  }

  type CheckpointRoute = { Params: { modelId: string; '*': string } };

  app.get<CheckpointRoute>('/api/v1/training_runs/:modelId/checkpoints/*', async (request) => {
    const who = owner(request);
    const { checkpointId, action } = splitCheckpoint(request.params['*']);
    const checkpoint = await store.checkpoints.get(request.params.modelId, checkpointId, who);
    if (!checkpoint) throw notFound('checkpoint', `${request.params.modelId}/${checkpointId}`);
    if (action === '') return checkpointJson(checkpoint);
    const expiresAt = Date.now() + ARCHIVE_TTL_MS;
    const grant = { modelId: checkpoint.modelId, checkpointId, owner: who, expiresAt };
    const base = `${request.protocol}://${request.headers.host ?? 'localhost'}`;
    if (action === 'archive') return { url: `${base}/api/v1/checkpoint_archives/${signer.sign(grant)}`, expires: iso(expiresAt) };
    if (action !== 'external_weights_urls') throw notFound('route', request.url);
    // SDK >= 0.28 (docs/protocol.md §3.6): one signed URL per file, keyed by its path in the folder.
    if (checkpoint.checkpointType !== 'external') {
      throw badRequest(`${checkpoint.tinkerPath} is not an external checkpoint; external_weights_urls serves those of save_weights_external`, 'invalid_checkpoint_id');
    }
    const urls = Object.fromEntries(PEFT_FILES.map((file) => [file, `${base}/api/v1/checkpoint_files/${signer.sign({ ...grant, file })}`]));
    return { urls, expires: iso(expiresAt) };
  });

  // The signed link authorises itself; it streams one file of an external checkpoint.
  app.get<{ Params: { token: string } }>('/api/v1/checkpoint_files/:token', async (request, reply) => {
    const grant = signer.verify(request.params.token, Date.now());
    if (!grant || !PEFT_FILES.some((file) => file === grant.file)) throw gone('this download link is invalid or has expired; request a new one');
    const checkpoint = await store.checkpoints.get(grant.modelId, grant.checkpointId, grant.owner);
    const file = checkpoint ? path.join(checkpoint.storagePath, grant.file!) : undefined;
    if (!file || !existsSync(file)) throw notFound('checkpoint', `${grant.modelId}/${grant.checkpointId}`);
    const type = grant.file!.endsWith('.json') ? 'application/json' : 'application/octet-stream';
    return reply.type(type).header('content-disposition', `attachment; filename="${grant.file}"`).send(createReadStream(file));
  });

  app.delete<CheckpointRoute>('/api/v1/training_runs/:modelId/checkpoints/*', async (request) => {
    const who = owner(request);
    const { checkpointId, action } = splitCheckpoint(request.params['*']);
    if (action === 'publish') {
      await ownCheckpoint(request.params.modelId, checkpointId, who);
      await store.checkpoints.setPublic(request.params.modelId, checkpointId, who, false);
      return {};
    }
    if (action !== '') throw notFound('route', request.url);
    const deleted = await store.checkpoints.delete(request.params.modelId, checkpointId, who);
    if (!deleted) throw notFound('checkpoint', `${request.params.modelId}/${checkpointId}`);
    rmSync(deleted.storagePath, { recursive: true, force: true });
    return {};
  });

  app.post<CheckpointRoute>('/api/v1/training_runs/:modelId/checkpoints/*', async (request) => {
    const who = owner(request);
    const { checkpointId, action } = splitCheckpoint(request.params['*']);
    if (action !== 'publish') throw notFound('route', request.url);
    await ownCheckpoint(request.params.modelId, checkpointId, who);
    // Publishing twice is a no-op 2xx: the SDK would retry a 409 for minutes.
    await store.checkpoints.setPublic(request.params.modelId, checkpointId, who, true);
    return {};
  });

  app.put<CheckpointRoute>('/api/v1/training_runs/:modelId/checkpoints/*', { schema: { body: TtlBody } }, async (request) => {
    const who = owner(request);
    const { checkpointId, action } = splitCheckpoint(request.params['*']);
    if (action !== 'ttl') throw notFound('route', request.url);
    await ownCheckpoint(request.params.modelId, checkpointId, who);
    const ttl = (request.body as { ttl_seconds: number | null }).ttl_seconds;
    await store.checkpoints.setExpiry(request.params.modelId, checkpointId, who, ttl === null ? null : Date.now() + ttl * 1000);
    return {};
  });

  app.get('/api/v1/sessions', { schema: { querystring: PagingQuery } }, async (request) => {
    const { limit, offset } = paging(request.query, 20);
    const { sessions } = await store.sessions.list(owner(request), limit, offset);
    return { sessions: sessions.map((s) => s.sessionId) };
  });

  app.get<{ Params: { sessionId: string } }>('/api/v1/sessions/:sessionId', async (request) => {
    const session = await store.sessions.get(request.params.sessionId, owner(request));
    if (!session) throw notFound('session', request.params.sessionId);
    return {
      training_run_ids: await store.runs.listForSession(session.sessionId),
      sampler_ids: await store.samplers.listForSession(session.sessionId),
      user_metadata: stringValues(session.userMetadata),
    };
  });

  // SDK ~0.31 (docs/protocol.md §6): what the caller's checkpoints hold now. Storage is not billed here.
  app.get('/api/v1/billing/usage/checkpoints/current', { schema: { querystring: BillingUsageQuery } }, async (request) => {
    const projectId = request.query.project_id;
    const { count, bytes } = await store.checkpoints.usage(owner(request), projectId);
    return {
      effective_rate_usd_per_gigabyte_month: 0,
      data: [
        {
          ...(projectId !== undefined ? { project_id: projectId } : {}),
          checkpoint_count: count,
          size_bytes: bytes,
          size_gigabytes: bytes / 1e9,
          estimated_monthly_cost_usd: 0,
        },
      ],
    };
  });

  // The signed link authorises itself; it streams a tar of the PEFT adapter folder.
  app.get<{ Params: { token: string } }>('/api/v1/checkpoint_archives/:token', async (request, reply) => {
    const grant = signer.verify(request.params.token, Date.now());
    if (!grant) throw gone('this archive link is invalid or has expired; request a new one');
    const checkpoint = await store.checkpoints.get(grant.modelId, grant.checkpointId, grant.owner);
    if (!checkpoint) throw notFound('checkpoint', `${grant.modelId}/${grant.checkpointId}`);
    const run = await store.runs.get(grant.modelId, checkpoint.owner);
    if (!run) throw notFound('training run', grant.modelId);
    services.checkLocal(run);
    const work = mkdtempSync(path.join(os.tmpdir(), 'lathe-archive-'));
    // An external checkpoint is a PEFT folder already; others are exported to one.
    let folder = checkpoint.storagePath;
    if (checkpoint.checkpointType !== 'external') {
      folder = path.join(work, 'adapter');
      try {
        const client = await services.pool.client(run.baseModel);
        await client.request('export_peft', { source: checkpoint.storagePath, path: folder });
      } catch (error) {
        rmSync(work, { recursive: true, force: true });
        throw error;
      }
    }
    const name = `${grant.checkpointId.replace('/', '-')}.tar`;
    const stream = createTar({ cwd: folder, portable: true }, ['adapter_model.safetensors', 'adapter_config.json']);
    // Remove the folder once the download is over however it ends: sent, or the client went away
    // (then the stream never ends; the response closes and Fastify destroys the stream).
    let removed = false;
    const cleanup = (): void => {
      if (removed) return;
      removed = true;
      rmSync(work, { recursive: true, force: true });
    };
    stream.once('end', cleanup);
    stream.once('close', cleanup);
    reply.raw.once('close', cleanup);
    if (reply.raw.destroyed) {
      // The client left while the adapter was being exported.
      stream.destroy();
      cleanup();
    }
    return reply.type('application/x-tar').header('content-disposition', `attachment; filename="${name}"`).send(stream);
  });
}
