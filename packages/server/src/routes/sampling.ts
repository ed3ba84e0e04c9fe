/**
 * @module Sampling sessions and `asample` (tinker-protocol.md §4.5), and the futures endpoint
 * `retrieve_future` (§3), which long-polls on an in-process notification.
 */
import { badRequest, gone, notFound } from '../http/errors.js';
import { parseTinkerPath } from '../checkpoints/paths.js';
import { checkContext, checkTokens } from '../protocol/datums.js';
import { denseWithFill as denseIds, ProtoDecodeError, type CsrIndex } from '@lathe/protocol';
import { idsFromJson, modelInputFromJson } from '../protocol/proto.js';
import { renderResult, unpackResult } from '../protocol/results.js';
import {
  CancelFutureBody,
  CreateSamplingSessionBody,
  JoinSamplingSessionBody,
  MAX_TOPK_PROMPT_LOGPROBS,
  RetrieveFutureBody,
  RetrieveFuturesBody,
  SampleBody,
  type SampleBodyWire,
} from '../protocol/schemas.js';
import { CLONE_SEQ_SPAN, cloneKey, type FutureCompletion } from '../scheduler/session-futures.js';
import { samplerAdapter, type Services } from '../services.js';
import type { SamplerRow } from '../store/index.js';
import type { ModelEntry } from '../worker/catalogue.js';
import { toWire, tokensToWire } from '../worker/tensor.js';
import { owner, type TypedApp } from './context.js';

/** A preallocated abort reason: `abort()` without one builds a DOMException with a stack each time. */
const DONE = new Error('long poll finished');

/** How long `retrieve_future` holds a poll before answering 408 try_again (the SDK waits 45 s). */
export const DEFAULT_LONG_POLL_MS = 30_000;

/**
 * The sampling extras of an `asample` body (docs/protocol.md §5.1) as worker item fields, checked
 * against the prompt and the model (the worker's rules, worker/README.md), so a bad one is a 400
 * naming the field at submit. A CSR `target_prompt_logprobs` travels dense with -1 in the cells
 * it leaves out; its index comes back as `targetCsr` for answering in the same layout.
 *
 * @example
 * sampleExtras({ prompt_alt_tokens_k: 2 }, [1, 2, 3], model); // { fields: { prompt_alt_tokens_k: 2 } }
 */
export function sampleExtras(body: SampleBodyWire, prompt: readonly number[], model: ModelEntry): { fields: Record<string, unknown>; targetCsr?: CsrIndex } {
  const fields: Record<string, unknown> = {};
  if (body.topk_sample_logprobs) fields['topk_sample_logprobs'] = body.topk_sample_logprobs;
  if (body.prompt_alt_tokens_k) fields['prompt_alt_tokens_k'] = body.prompt_alt_tokens_k;
  if (body.prompt_logprobs_last_n !== undefined && body.prompt_logprobs_last_n !== null) fields['prompt_logprobs_last_n'] = body.prompt_logprobs_last_n;
  const raw = body.target_prompt_logprobs;
  if (raw === undefined || raw === null) return { fields };
  const what = 'target_prompt_logprobs';
  const bad = (message: string) => badRequest(`${what}: ${message}`, 'invalid_target_prompt_logprobs');
  let ids;
  try {
    const laidOut = idsFromJson(raw, what);
    if (laidOut.shape.length !== 2) throw bad(`must be 2-D, [len(prompt) - 1, K], got shape [${laidOut.shape.join(', ')}]`);
    const [rows, k] = laidOut.shape as [number, number];
    if (rows !== prompt.length - 1) throw bad(`must have len(prompt) - 1 = ${prompt.length - 1} rows, got ${rows}`);
    if (k < 1 || k > MAX_TOPK_PROMPT_LOGPROBS) throw bad(`K (ids per position) must be in [1, ${MAX_TOPK_PROMPT_LOGPROBS}], got ${k}`);
    ids = { dense: denseIds(laidOut, -1n, what), csr: laidOut.csr };
  } catch (error) {
    if (error instanceof ProtoDecodeError) throw badRequest(error.message, 'invalid_target_prompt_logprobs');
    throw error;
  }
  let named = false;
  for (const id of ids.dense.data as BigInt64Array) {
    if (id < -1n || id >= BigInt(model.vocab_size)) throw bad(`token id ${id} is outside the vocabulary [0, ${model.vocab_size}) of ${model.model_name} (-1 = no request)`);
    if (id >= 0n) named = true;
  }
  if (!named) throw bad('names no token id (every cell is -1)');
  fields[what] = toWire(ids.dense.data as BigInt64Array, ids.dense.shape);
  return ids.csr ? { fields, targetCsr: ids.csr } : { fields };
}

export function samplingRoutes(app: TypedApp, services: Services, longPollMs: number): void {
  const { store } = services;

  async function samplerFromCheckpoint(who: string, sessionId: string, samplerId: string, modelPath: string, persist = true): Promise<SamplerRow> {
    const parsed = parseTinkerPath(modelPath, { loadable: true });
    const checkpoint = await store.checkpoints.get(parsed.modelId, parsed.checkpointId, who);
    if (!checkpoint) throw notFound('checkpoint', modelPath);
    const source = await store.runs.get(parsed.modelId, checkpoint.owner);
    if (!source) throw notFound('training run', parsed.modelId);
    services.checkLocal(source);
    const row = { samplerId, owner: who, sessionId, baseModel: source.baseModel, modelPath };
    return persist ? store.samplers.create({ ...row, now: Date.now() }) : { ...row, createdAt: Date.now() };
  }

  app.post('/api/v1/create_sampling_session', { schema: { body: CreateSamplingSessionBody } }, async (request) => {
    const body = request.body;
    const who = owner(request);
    const session = await store.sessions.get(body.session_id, who);
    if (!session) throw notFound('session', body.session_id);
    const samplerId = `${body.session_id}:sample:${body.sampling_session_seq_id}`;
    if (body.model_path) {
      await samplerFromCheckpoint(who, body.session_id, samplerId, body.model_path);
    } else if (body.base_model) {
      await services.knownModel(body.base_model);
      await store.samplers.create({ samplerId, owner: who, sessionId: body.session_id, baseModel: body.base_model, modelPath: null, now: Date.now() });
    } else {
      throw badRequest('create_sampling_session needs base_model or model_path', 'invalid_request');
    }
    return { type: 'create_sampling_session', sampling_session_id: samplerId };
  });

  app.get<{ Params: { samplerId: string } }>('/api/v1/samplers/:samplerId', async (request) => {
    const sampler = await store.samplers.get(request.params.samplerId, owner(request));
    if (!sampler) throw notFound('sampler', request.params.samplerId);
    return { sampler_id: sampler.samplerId, base_model: sampler.baseModel, ...(sampler.modelPath ? { model_path: sampler.modelPath } : {}) };
  });

  /** Resolves what to sample from: a sampling session, or an ad-hoc base model / model path. */
  async function resolveSampler(who: string, body: SampleBodyWire): Promise<SamplerRow> {
    if (body.sampling_session_id) {
      const sampler = await store.samplers.get(body.sampling_session_id, who);
      if (!sampler) throw notFound('sampling session', body.sampling_session_id);
      return sampler;
    }
    // Ad-hoc targets are per key, so one caller's seq ids never collide with another's.
    if (body.model_path) return samplerFromCheckpoint(who, 'adhoc', `adhoc:${who}:${body.model_path}`, body.model_path, false);
    if (body.base_model) {
      await services.knownModel(body.base_model);
      return { samplerId: `adhoc:${who}:${body.base_model}`, owner: who, sessionId: 'adhoc', baseModel: body.base_model, modelPath: null, createdAt: 0 };
    }
    throw badRequest('asample needs sampling_session_id, base_model or model_path', 'invalid_request');
  }

  app.post('/api/v1/asample', { schema: { body: SampleBody } }, async (request) => {
    const body = request.body;
    const who = owner(request);
    const sampler = await resolveSampler(who, body);
    const model = await services.knownModel(sampler.baseModel);
    let prompt: number[];
    try {
      prompt = modelInputFromJson(body.prompt);
    } catch (error) {
      if (error instanceof ProtoDecodeError) throw badRequest(`prompt: ${error.message}`, 'invalid_prompt');
      throw error;
    }
    if (prompt.length === 0) throw badRequest('prompt is empty', 'empty_input');
    checkTokens(prompt, model, 'prompt');
    const params = body.sampling_params ?? {};
    const maxTokens = params.max_tokens ?? Math.max(1, model.max_context_length - prompt.length);
    checkContext(prompt.length, maxTokens, model);
    // The schema bounds num_samples, max_tokens, temperature, top_k, top_p and topk_prompt_logprobs.
    const numSamples = body.num_samples ?? 1;
    const stop = params.stop;
    if (Array.isArray(stop)) {
      for (const s of stop) if (typeof s === 'number') checkTokens([s], model, 'sampling_params.stop');
    }
    const extras = sampleExtras(body, prompt, model);
    const seed = params.seed === null || params.seed === undefined ? undefined : ((params.seed % 2 ** 53) + 2 ** 53) % 2 ** 53;
    const item = {
      prompt: tokensToWire(prompt),
      num_samples: numSamples,
      sampling_params: {
        max_tokens: maxTokens,
        temperature: params.temperature ?? 1,
        top_k: params.top_k ?? -1,
        top_p: params.top_p ?? 1,
        ...(stop !== undefined && stop !== null ? { stop } : {}),
        ...(seed !== undefined ? { seed } : {}),
      },
      prompt_logprobs: body.prompt_logprobs ?? false,
      topk_prompt_logprobs: body.topk_prompt_logprobs ?? 0,
      ...extras.fields,
    };
    const checkpoint = sampler.modelPath ? await store.checkpoints.byTinkerPath(sampler.modelPath, who) : undefined;
    if (sampler.modelPath && !checkpoint) throw notFound('checkpoint', sampler.modelPath);
    // Its files are in the data dir of the server that holds the run that saved it.
    const source = checkpoint && (await store.runs.get(checkpoint.modelId, checkpoint.owner));
    if (source) services.checkLocal(source);
    const seqId = body.seq_id !== undefined && Number.isSafeInteger(body.seq_id) ? body.seq_id : null;
    const requestId = await services.submitSample(who, sampler.samplerId, seqId, {
      baseModel: sampler.baseModel,
      adapter: checkpoint && sampler.modelPath ? samplerAdapter(sampler.modelPath) : null,
      load: checkpoint ? { path: checkpoint.storagePath } : null,
      item,
      ...(extras.targetCsr ? { targetCsr: extras.targetCsr } : {}),
    });
    return { request_id: requestId, sample_sequence_ids: Array.from({ length: numSamples }, (_, i) => `${requestId}:${i}`) };
  });

  /**
   * The SDK's per-session completion poller (docs/protocol.md §5.5): finished and failed samples of
   * one session clone after `prev_cursor`, held up to the long-poll time while there are none.
   * The payloads are still fetched with `retrieve_future`.
   */
  app.post('/api/v1/retrieve_futures', { schema: { body: RetrieveFuturesBody } }, async (request, reply) => {
    const body = request.body;
    const who = owner(request);
    const samplerId = body.target.sampling_session_id;
    if (!(await store.samplers.get(samplerId, who))) throw notFound('sampling session', samplerId);
    const clone = body.target.cloned_sampler_id ?? 0;
    const key = cloneKey(samplerId, clone);
    const log = services.sessionFutures;
    const prev = body.prev_cursor ?? 0;
    const abort = new AbortController();
    reply.raw.once('close', () => abort.abort(DONE));
    let { completions, cursor } = log.since(key, prev);
    if (log.stale(prev)) {
      // A first poll, or a cursor from before this process or older than the log: the store knows the rest.
      const seen = new Set(completions.map((c) => c.request_id));
      const stored = await store.requests.finishedIn(samplerId, clone * CLONE_SEQ_SPAN, (clone + 1) * CLONE_SEQ_SPAN);
      const older: FutureCompletion[] = stored.filter((r) => !seen.has(r.requestId)).map((r) => ({ state: r.status === 'complete' ? 'finished' : 'failed', request_id: r.requestId }));
      completions = [...older, ...completions];
    }
    const holdMs = body.timeout ? Math.min(longPollMs, body.timeout * 1000) : longPollMs;
    if (completions.length === 0 && holdMs > 0) {
      // since() and wait() run without an await between them, so no completion falls in between.
      const next = log.since(key, cursor);
      if (next.completions.length === 0) await log.wait(key, holdMs, abort.signal);
      ({ completions, cursor } = log.since(key, cursor));
    }
    abort.abort(DONE);
    return { completions, cursor };
  });

  /** Cancels a queued sample (docs/protocol.md §5.7); one that is running or finished is left alone. */
  app.post('/api/v1/cancel_future', { schema: { body: CancelFutureBody } }, async (request) => {
    const requestId = request.body.request_id;
    const row = await store.requests.get(requestId, owner(request));
    if (!row) throw notFound('future', requestId);
    if (row.kind !== 'sample') throw badRequest(`request_id ${JSON.stringify(requestId)} is a ${row.kind} request; only sampling requests can be cancelled`, 'not_cancellable');
    const cancelled = await services.cancelSample(requestId);
    return { type: 'cancel_future', request_id: requestId, cancelled };
  });

  /** A new client of a sampling session (an unpickled SDK SamplingClient) gets its own seq block. */
  app.post('/api/v1/join_sampling_session', { schema: { body: JoinSamplingSessionBody } }, async (request) => {
    const samplerId = request.body.sampling_session_id;
    const counter = await store.samplers.joinClient(samplerId, owner(request));
    if (counter === undefined) throw notFound('sampling session', samplerId);
    return { type: 'join_sampling_session', client_counter: counter };
  });

  app.post('/api/v1/retrieve_future', { schema: { body: RetrieveFutureBody } }, async (request, reply) => {
    const who = owner(request);
    const requestId = request.body.request_id;
    // Register the waiter before reading, so a completion between the read and the wait is not missed.
    // The response's close means sent or disconnected (the request's fires once its body is read).
    const abort = new AbortController();
    reply.raw.once('close', () => abort.abort(DONE));
    const woken = services.hub.wait(requestId, longPollMs, abort.signal);
    const read = async () => {
      const found = await store.requests.get(requestId, who);
      return found && services.settled(found);
    };
    let row = await read();
    if (!row) {
      abort.abort(DONE);
      throw gone(`future ${requestId} is unknown or expired`);
    }
    if (row.status === 'pending' || row.status === 'running') {
      await woken;
      row = await read();
    } else {
      abort.abort(DONE);
    }
    if (!row || row.status === 'pending' || row.status === 'running') {
      return reply.code(408).send({ type: 'try_again', request_id: requestId, queue_state: 'active' });
    }
    if (row.status === 'failed') {
      return { error: row.error?.message ?? 'request failed', category: row.error?.category ?? 'unknown' };
    }
    if (!row.result) return {};
    const rendered = renderResult(unpackResult(row.result), request.headers.accept);
    if (rendered.contentType === 'application/x-protobuf') {
      return reply.type('application/x-protobuf').send(Buffer.from(rendered.body as Uint8Array));
    }
    return rendered.body;
  });
}
