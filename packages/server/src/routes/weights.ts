/**
 * @module Checkpoint routes of a training run: save (training, sampler and PEFT weights), load,
 * weights_info and copy_weights (tinker-protocol.md §4.4).
 */
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { badRequest, notFound } from '../http/errors.js';
import { checkpointDir, checkName, formatTinkerPath, parseTinkerPath, type CheckpointKind } from '../checkpoints/paths.js';
import { parseOptimizerConfig } from '../protocol/optimizers.js';
import { CopyWeightsBody, LoadWeightsBody, SaveWeightsBody, SaveWeightsExternalBody, SaveWeightsForSamplerBody, WeightsInfoBody } from '../protocol/schemas.js';
import type { TrainingOp } from '../scheduler/lane.js';
import type { JobMeta, Services } from '../services.js';
import type { RunRow } from '../store/index.js';
import { owner, type TypedApp } from './context.js';
import { FutureReply } from './responses.js';
import { trainingSubmitter } from './training-submit.js';

/** A checkpoint's `user_metadata`: string values only (the SDK validates them so when it reads them back). */
function checkMetadata(metadata: Record<string, unknown> | null | undefined): Record<string, string> | null {
  if (!metadata) return null;
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') throw badRequest(`user_metadata['${key}'] must be a string, got ${JSON.stringify(value)}`, 'invalid_user_metadata');
  }
  return metadata as Record<string, string>;
}

/** Registers the checkpoint routes (called by `trainingRoutes`). */
export function weightsRoutes(app: TypedApp, services: Services): void {
  const { store } = services;
  const { run, submitChecked } = trainingSubmitter(services);

  /** Checkpoint options a save request carries besides its name. */
  interface SaveOptions {
    ttlSeconds?: number | null | undefined;
    userMetadata?: Record<string, unknown> | null | undefined;
    /** For unnamed sampler saves: the sampling session to create on the weights. */
    sampler?: { samplerId: string; sessionId: string; baseModel: string } | null;
    overwrite?: boolean;
  }

  /** The record of a checkpoint kind: its `checkpoint_type` and the worker op that writes it. */
  const SAVES: Record<CheckpointKind, { checkpointType: 'training' | 'sampler' | 'external'; op: (storagePath: string) => TrainingOp }> = {
    weights: { checkpointType: 'training', op: (p) => ({ kind: 'save_adapter', path: p, includeOptimizer: true }) },
    sampler_weights: { checkpointType: 'sampler', op: (p) => ({ kind: 'save_adapter', path: p, includeOptimizer: false }) },
    // PEFT's own names, so `peft` and vLLM load the folder as it is.
    external_weights: { checkpointType: 'external', op: (p) => ({ kind: 'export_peft', path: p, naming: 'peft' }) },
  };

  /**
   * The job that saves the adapter into the checkpoint store (recorded when done). A name taken
   * without `overwrite` is refused (a retry of the save that took it gets that save's future).
   */
  async function saveJob(request: { owner: string | null }, found: RunRow, kind: CheckpointKind, name: string, options: SaveOptions = {}): Promise<{ op: TrainingOp; meta: JobMeta }> {
    checkName(name);
    const userMetadata = checkMetadata(options.userMetadata);
    if (options.overwrite === false && (await store.checkpoints.get(found.modelId, `${kind}/${name}`, owner(request as never)))) {
      throw badRequest(`checkpoint ${formatTinkerPath(found.modelId, kind, name)} already exists; pass overwrite=true to replace it`, 'already_exists');
    }
    const storagePath = checkpointDir(services.dataDir, found.modelId, kind, name);
    mkdirSync(path.dirname(storagePath), { recursive: true });
    const sampler = options.sampler ?? null;
    return {
      op: SAVES[kind].op(storagePath),
      meta: {
        kind: 'save',
        checkpointType: SAVES[kind].checkpointType,
        checkpointId: `${kind}/${name}`,
        tinkerPath: formatTinkerPath(found.modelId, kind, name),
        storagePath,
        ttlSeconds: options.ttlSeconds ?? null,
        ephemeral: sampler !== null,
        sampler,
        userMetadata,
      },
    };
  }

  app.post('/api/v1/save_weights', { schema: { body: SaveWeightsBody, response: FutureReply } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'save', () =>
      saveJob(request, found, 'weights', body.path, { ttlSeconds: body.ttl_seconds, userMetadata: body.user_metadata, overwrite: body.overwrite ?? false }),
    );
  });

  app.post('/api/v1/save_weights_for_sampler', { schema: { body: SaveWeightsForSamplerBody } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'save', () => {
      if (body.path !== undefined) return saveJob(request, found, 'sampler_weights', body.path, { ttlSeconds: body.ttl_seconds, userMetadata: body.user_metadata });
      if (body.sampling_session_seq_id === undefined) throw badRequest('either path or sampling_session_seq_id is required', 'invalid_request');
      // Unnamed: ephemeral weights plus a sampling session on them (save_weights_and_get_sampling_client).
      const samplerId = `${found.sessionId}:sample:${body.sampling_session_seq_id}`;
      const name = `ephemeral-${body.sampling_session_seq_id}-seq${body.seq_id}`;
      return saveJob(request, found, 'sampler_weights', name, {
        ttlSeconds: body.ttl_seconds ?? 24 * 3600,
        userMetadata: body.user_metadata,
        sampler: { samplerId, sessionId: found.sessionId, baseModel: found.baseModel },
      });
    });
  });

  // SDK >= 0.28 (docs/protocol.md §3.5): the adapter as a Hugging Face PEFT folder
  // (adapter_config.json + adapter_model.safetensors), offered by GET …/external_weights_urls.
  app.post('/api/v1/save_weights_external', { schema: { body: SaveWeightsExternalBody } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'save', () =>
      saveJob(request, found, 'external_weights', body.path, { ttlSeconds: body.ttl_seconds, userMetadata: body.user_metadata }),
    );
  });

  app.post('/api/v1/load_weights', { schema: { body: LoadWeightsBody } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'load_weights', async () => {
      const parsed = parseTinkerPath(body.path, { loadable: true });
      // A run's optimizer is chosen at create_model and never changes (the SDK's rule too).
      if (body.optimizer_config !== undefined && body.optimizer_config !== null) {
        const wanted = parseOptimizerConfig(body.optimizer_config, 'optimizer_config');
        if (wanted.type !== found.optimizerConfig.type) {
          throw badRequest(`optimizer_config: training run ${found.modelId} uses the ${found.optimizerConfig.type} optimizer, which cannot change; create the model with optimizer_config ${JSON.stringify(wanted)} instead`, 'optimizer_mismatch');
        }
      }
      const checkpoint = await store.checkpoints.get(parsed.modelId, parsed.checkpointId, owner(request));
      if (!checkpoint) throw notFound('checkpoint', body.path);
      if (body.optimizer && checkpoint.checkpointType === 'sampler') {
        throw badRequest(`${body.path} is a sampler checkpoint and holds no optimizer state; use load_state without optimizer or a weights/ checkpoint`, 'no_optimizer_state');
      }
      const source = await store.runs.get(parsed.modelId, checkpoint.owner);
      if (source) services.checkLocal(source);
      if (source && source.baseModel !== found.baseModel) {
        throw badRequest(`${body.path} was trained on ${source.baseModel}, but ${found.modelId} uses ${found.baseModel}`, 'base_model_mismatch');
      }
      if (body.optimizer && source && source.optimizerConfig.type !== found.optimizerConfig.type) {
        throw badRequest(`optimizer: ${body.path} holds ${source.optimizerConfig.type} optimizer state, which cannot be loaded into ${found.modelId}, a ${found.optimizerConfig.type} run; load it without optimizer state`, 'optimizer_mismatch');
      }
      return {
        op: { kind: 'load_adapter', path: checkpoint.storagePath, includeOptimizer: body.optimizer ?? false, optimizer: found.optimizerConfig },
        meta: { kind: 'load_weights', path: body.path },
      };
    });
  });

  app.post('/api/v1/weights_info', { schema: { body: WeightsInfoBody } }, async (request) => {
    const parsed = parseTinkerPath(request.body.tinker_path);
    const checkpoint = await store.checkpoints.get(parsed.modelId, parsed.checkpointId, owner(request));
    if (!checkpoint) throw notFound('checkpoint', request.body.tinker_path);
    const source = await store.runs.get(parsed.modelId, checkpoint.owner);
    if (!source) throw notFound('training run', parsed.modelId);
    return {
      base_model: source.baseModel,
      is_lora: true,
      lora_rank: source.loraRank,
      train_unembed: source.loraConfig.trainUnembed,
      train_mlp: source.loraConfig.trainMlp,
      train_attn: source.loraConfig.trainAttn,
      optimizer_config: source.optimizerConfig,
    };
  });

  // SDK >= 0.26 (docs/protocol.md §3.7): answered synchronously. The copy lives in a new run of the
  // caller's session (`{session_id}:train:{model_seq_id}`), which takes no training requests and
  // keeps the source run's base model, LoRA settings and optimizer, so weights_info and
  // load_weights treat the copy like the original. A retry returns the same copy.
  app.post('/api/v1/copy_weights', { schema: { body: CopyWeightsBody } }, async (request) => {
    const body = request.body;
    const who = owner(request);
    const session = await store.sessions.get(body.session_id, who);
    if (!session) throw notFound('session', body.session_id);
    const parsed = parseTinkerPath(body.source_path);
    const checkpoint = await store.checkpoints.get(parsed.modelId, parsed.checkpointId, who);
    if (!checkpoint || checkpoint.owner !== who || checkpoint.ephemeral) throw notFound('checkpoint', body.source_path);
    const source = await store.runs.get(parsed.modelId, who);
    if (!source) throw notFound('training run', parsed.modelId);
    services.checkLocal(source);
    const modelId = `${body.session_id}:train:${body.model_seq_id}`;
    const tinkerPath = formatTinkerPath(modelId, parsed.kind, parsed.name);
    const target = await store.runs.create({
      modelId,
      owner: who,
      sessionId: body.session_id,
      baseModel: source.baseModel,
      loraRank: source.loraRank,
      loraConfig: source.loraConfig,
      userMetadata: source.userMetadata,
      optimizerConfig: source.optimizerConfig,
      state: 'unloaded',
      now: Date.now(),
      serverId: services.serverId,
    });
    if (target.state !== 'unloaded' || target.baseModel !== source.baseModel) {
      throw badRequest(`model_seq_id ${body.model_seq_id} of session ${body.session_id} is already a training run (${modelId}); copy_weights needs a new model_seq_id`, 'invalid_model_seq_id');
    }
    const existing = await store.checkpoints.get(modelId, parsed.checkpointId, who);
    if (existing) return { tinker_path: existing.tinkerPath }; // a retry of this copy
    const storagePath = checkpointDir(services.dataDir, modelId, parsed.kind, parsed.name);
    rmSync(storagePath, { recursive: true, force: true }); // files of a copy that failed half-way
    cpSync(checkpoint.storagePath, storagePath, { recursive: true });
    const now = Date.now();
    await store.checkpoints.put({
      modelId,
      checkpointId: parsed.checkpointId,
      owner: who,
      checkpointType: checkpoint.checkpointType,
      tinkerPath,
      storagePath,
      sizeBytes: checkpoint.sizeBytes,
      expiresAt: body.ttl_seconds ? now + body.ttl_seconds * 1000 : null,
      ephemeral: false,
      userMetadata: checkpoint.userMetadata,
      now,
    });
    return { tinker_path: tinkerPath };
  });
}
