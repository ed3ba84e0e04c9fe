/**
 * @module Sampling sessions and `asample` (tinker-protocol.md §4.5), and the futures endpoint
 * `retrieve_future` (§3), which long-polls on an in-process notification.
 */
import { badRequest, gone, notFound } from '../http/errors.js';
import { parseTinkerPath } from '../checkpoints/paths.js';
import { checkContext, checkTokens } from '../protocol/datums.js';
import { modelInputFromJson, ProtoDecodeError } from '../protocol/proto.js';
import { renderResult, unpackResult } from '../protocol/results.js';
import { CreateSamplingSessionBody, RetrieveFutureBody, SampleBody, type SampleBodyWire } from '../protocol/schemas.js';
import { samplerAdapter, type Services } from '../services.js';
import type { SamplerRow } from '../store/index.js';
import { tokensToWire } from '../worker/tensor.js';
import { owner, type TypedApp } from './context.js';

/** A preallocated abort reason: `abort()` without one builds a DOMException with a stack each time. */
const DONE = new Error('long poll finished');

/** How long `retrieve_future` holds a poll before answering 408 try_again (the SDK waits 45 s). */
export const DEFAULT_LONG_POLL_MS = 30_000;

export function samplingRoutes(app: TypedApp, services: Services, longPollMs: number): void {
  const { store } = services;

  async function samplerFromCheckpoint(who: string, sessionId: string, samplerId: string, modelPath: string, persist = true): Promise<SamplerRow> {
    const parsed = parseTinkerPath(modelPath);
    const checkpoint = await store.checkpoints.get(parsed.modelId, parsed.checkpointId, who);
    if (!checkpoint) throw notFound('checkpoint', modelPath);
    const source = await store.runs.get(parsed.modelId, checkpoint.owner);
    if (!source) throw notFound('training run', parsed.modelId);
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
      services.model(body.base_model);
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
      services.model(body.base_model);
      return { samplerId: `adhoc:${who}:${body.base_model}`, owner: who, sessionId: 'adhoc', baseModel: body.base_model, modelPath: null, createdAt: 0 };
    }
    throw badRequest('asample needs sampling_session_id, base_model or model_path', 'invalid_request');
  }

  app.post('/api/v1/asample', { schema: { body: SampleBody } }, async (request) => {
    const body = request.body;
    const who = owner(request);
    const sampler = await resolveSampler(who, body);
    const model = services.model(sampler.baseModel);
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
    };
    const checkpoint = sampler.modelPath ? await store.checkpoints.byTinkerPath(sampler.modelPath, who) : undefined;
    if (sampler.modelPath && !checkpoint) throw notFound('checkpoint', sampler.modelPath);
    const seqId = body.seq_id !== undefined && Number.isSafeInteger(body.seq_id) ? body.seq_id : null;
    const requestId = await services.submitSample(who, sampler.samplerId, seqId, {
      baseModel: sampler.baseModel,
      adapter: checkpoint && sampler.modelPath ? samplerAdapter(sampler.modelPath) : null,
      load: checkpoint ? { path: checkpoint.storagePath } : null,
      item,
    });
    return { request_id: requestId, sample_sequence_ids: Array.from({ length: numSamples }, (_, i) => `${requestId}:${i}`) };
  });

  app.post('/api/v1/retrieve_future', { schema: { body: RetrieveFutureBody } }, async (request, reply) => {
    const who = owner(request);
    const requestId = request.body.request_id;
    // Register the waiter before reading, so a completion between the read and the wait is not missed.
    // The response's close means sent or disconnected (the request's fires once its body is read).
    const abort = new AbortController();
    reply.raw.once('close', () => abort.abort(DONE));
    const woken = services.hub.wait(requestId, longPollMs, abort.signal);
    let row = await store.requests.get(requestId, who);
    if (!row) {
      abort.abort(DONE);
      throw gone(`future ${requestId} is unknown or expired`);
    }
    if (row.status === 'pending' || row.status === 'running') {
      await woken;
      row = await store.requests.get(requestId, who);
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
