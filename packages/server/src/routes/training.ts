/**
 * @module Training runs: create, info, forward/backward, optimizer steps (tinker-protocol.md
 * §4.2–4.3); checkpoints are in weights.ts. Every submit answers at once with a future.
 */
import { badRequest, notFound } from '../http/errors.js';
import { prepareData } from '../protocol/datums.js';
import { parseOptimizerConfig, optimStepParams } from '../protocol/optimizers.js';
import { decodeForwardBackwardEnvelope, ProtoDecodeError, type ForwardBackwardEnvelope, type WireDatum } from '@lathe/protocol';
import { modelInputFromJson, tensorFromJson } from '../protocol/proto.js';
import { CreateModelBody, ForwardBackwardBody, ForwardBody, ModelIdBody, OptimStepBody, type LoraConfigWire } from '../protocol/schemas.js';
import { FutureReply } from './responses.js';
import type { Services } from '../services.js';
import { owner, type TypedApp } from './context.js';
import { trainingSubmitter } from './training-submit.js';
import { weightsRoutes } from './weights.js';

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Validates a LoRA config with the hosted service's messages (§4.2). */
export function checkLoraConfig(lora: LoraConfigWire | undefined): Required<Omit<LoraConfigWire, 'seed'>> & { seed: number | null } {
  const config = { rank: lora?.rank ?? 32, seed: lora?.seed ?? null, train_unembed: lora?.train_unembed ?? true, train_mlp: lora?.train_mlp ?? true, train_attn: lora?.train_attn ?? true };
  if (config.rank <= 0) throw badRequest('lora_config.rank must be positive', 'invalid_lora_config');
  if ((config.rank & (config.rank - 1)) !== 0) throw badRequest('lora_config.rank must be a power of 2', 'invalid_lora_config');
  if (config.rank > 1024) throw badRequest('lora_config.rank must be at most 1024', 'invalid_lora_config');
  if (!config.train_unembed && !config.train_mlp && !config.train_attn) {
    throw badRequest('At least one of train_unembed, train_mlp, or train_attn must be True', 'invalid_lora_config');
  }
  return config;
}

/** Fails unless a JSON `seq_id` is a whole number from `minimum` up to 2^53 - 1 (JSON.parse rounds beyond that). */
function checkSeqId(value: unknown, minimum: number): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < minimum) {
    throw badRequest(`seq_id must be an integer from ${minimum} to ${Number.MAX_SAFE_INTEGER}, got ${JSON.stringify(value) ?? 'nothing'}`, 'invalid_seq_id');
  }
}

/** Registers the training routes, then the checkpoint routes (weights.ts). */
export function trainingRoutes(app: TypedApp, services: Services): void {
  const { store } = services;
  const { run, submitChecked } = trainingSubmitter(services);

  app.post('/api/v1/create_model', { schema: { body: CreateModelBody, response: FutureReply } }, async (request) => {
    const body = request.body;
    const who = owner(request);
    const session = await store.sessions.get(body.session_id, who);
    if (!session) throw notFound('session', body.session_id);
    await services.knownModel(body.base_model);
    const lora = checkLoraConfig(body.lora_config);
    const optimizerConfig = parseOptimizerConfig(body.optimizer_config, 'optimizer_config');
    const modelId = `${body.session_id}:train:${body.model_seq_id}`;
    const existing = await store.runs.get(modelId, who);
    const created = existing ?? (await store.runs.create({
      modelId,
      owner: who,
      sessionId: body.session_id,
      baseModel: body.base_model,
      loraRank: lora.rank,
      loraConfig: { rank: lora.rank, seed: lora.seed, trainAttn: lora.train_attn, trainMlp: lora.train_mlp, trainUnembed: lora.train_unembed },
      userMetadata: Object.fromEntries(Object.entries(body.user_metadata ?? {}).map(([k, v]) => [k, String(v)])),
      optimizerConfig,
      now: Date.now(),
      serverId: services.serverId,
    }));
    services.checkLocal(created); // another server may have created this model id meanwhile
    if (!existing) services.lane(created.baseModel).registerRun(modelId);
    // A retry creates the adapter the run was created with.
    const requestId = await services.submitTraining(who, created, 0, { kind: 'create_adapter', lora, optimizer: created.optimizerConfig }, { kind: 'create_model' });
    return { request_id: requestId, model_id: modelId };
  });

  app.post('/api/v1/get_info', { schema: { body: ModelIdBody } }, async (request) => {
    const found = await run(request, request.body.model_id);
    const entry = services.models.find((m) => m.model_name === found.baseModel);
    return {
      type: 'get_info',
      model_id: found.modelId,
      model_name: found.baseModel,
      is_lora: true,
      lora_rank: found.loraRank,
      model_data: { arch: entry?.architecture ?? 'unknown', model_name: found.baseModel, tokenizer_id: found.baseModel },
    };
  });

  app.post('/api/v1/unload_model', { schema: { body: ModelIdBody, response: FutureReply } }, async (request) => {
    const found = await run(request, request.body.model_id);
    // Unload carries no seq_id of its own: it goes after everything logged for the run (and after
    // what the lane expects, should old rows have been pruned), so it never aliases another request.
    const logged = await store.requests.maxSeq(found.modelId);
    const seq = Math.max(logged === null ? 0 : logged + 1, services.lane(found.baseModel).expectedSeq(found.modelId) ?? 0);
    const requestId = await services.submitTraining(owner(request), found, seq, { kind: 'drop_adapter' }, { kind: 'unload_model' });
    return { request_id: requestId, model_id: found.modelId };
  });

  /** A forward(_backward) submit: its address first, its data read (and checked) once the run is known. */
  type ForwardSubmit = ForwardBackwardEnvelope;

  async function submitForward(request: { owner: string | null }, submit: ForwardSubmit): Promise<{ request_id: string; model_id: string }> {
    checkSeqId(submit.seqId, 1);
    const found = await run(request, submit.modelId);
    const kind = submit.forwardOnly ? 'forward' : 'forward_backward';
    return submitChecked(request, found, submit.seqId, kind, async () => {
      let msg: ReturnType<ForwardSubmit['read']>;
      try {
        msg = submit.read();
      } catch (error) {
        if (error instanceof ProtoDecodeError) throw badRequest(error.message, 'invalid_protobuf');
        throw error;
      }
      const data = prepareData(msg.lossFn, msg.data, await services.knownModel(found.baseModel));
      return { op: { kind, lossFn: msg.lossFn, lossFnConfig: msg.lossFnConfig, data }, meta: { kind } };
    });
  }

  /**
   * Reads the JSON form of a forward(_backward) request. The route schema checks JSON bodies; a
   * body without a JSON content type skips it, so every shape is checked here again.
   */
  function fromJsonInput(body: unknown, inputKey: string, forwardOnly: boolean): ForwardSubmit {
    if (!isRecord(body)) throw badRequest('the request body must be a JSON object', 'invalid_request');
    if (typeof body['model_id'] !== 'string') throw badRequest('model_id must be a string', 'invalid_request');
    return {
      modelId: body['model_id'],
      seqId: body['seq_id'] as number,
      forwardOnly: forwardOnly || body['forward_only'] === true,
      read: () => readJsonInput(body, inputKey),
    };
  }

  function readJsonInput(body: Record<string, unknown>, inputKey: string): ReturnType<ForwardSubmit['read']> {
    const input = body[inputKey];
    if (!isRecord(input)) throw badRequest(`${inputKey} must be an object with data and loss_fn`, 'invalid_request');
    if (!Array.isArray(input['data'])) throw badRequest(`${inputKey}.data must be a list of datums`, 'invalid_request');
    if (typeof input['loss_fn'] !== 'string') throw badRequest(`${inputKey}.loss_fn must be a string`, 'invalid_request');
    const config = input['loss_fn_config'] ?? {};
    if (!isRecord(config)) throw badRequest(`${inputKey}.loss_fn_config must be an object of numbers`, 'invalid_request');
    for (const [key, value] of Object.entries(config)) {
      if (typeof value !== 'number') throw badRequest(`${inputKey}.loss_fn_config['${key}'] must be a number, got ${JSON.stringify(value)}; this server's losses take numbers only`, 'invalid_request');
    }
    const data: WireDatum[] = input['data'].map((datum: unknown, i) => {
      const where = `${inputKey}.data[${i}]`;
      if (!isRecord(datum)) throw badRequest(`${where} must be an object with model_input and loss_fn_inputs`, 'invalid_datum');
      const lossFnInputs = datum['loss_fn_inputs'] ?? {};
      if (!isRecord(lossFnInputs)) throw badRequest(`${where}.loss_fn_inputs must be an object`, 'invalid_datum');
      try {
        return {
          modelInput: modelInputFromJson(datum['model_input']),
          lossFnInputs: Object.fromEntries(Object.entries(lossFnInputs).map(([k, v]) => [k, tensorFromJson(v, k)])),
        };
      } catch (error) {
        if (error instanceof ProtoDecodeError) throw badRequest(`${where}: ${error.message}`, 'invalid_datum');
        throw error;
      }
    });
    return { data, lossFn: input['loss_fn'], lossFnConfig: config as Record<string, number> };
  }

  // Protobuf (SDK >= 0.23, optionally zstd) or the JSON form of older SDKs.
  // Only JSON bodies have a schema: a protobuf body is checked by its decoder.
  app.post('/api/v1/forward_backward', { schema: { body: { content: { 'application/json': { schema: ForwardBackwardBody } } }, response: FutureReply } }, async (request) => {
    if (request.body instanceof Uint8Array) {
      let envelope: ForwardBackwardEnvelope;
      try {
        envelope = decodeForwardBackwardEnvelope(request.body);
      } catch (error) {
        if (error instanceof ProtoDecodeError) throw badRequest(error.message, 'invalid_protobuf');
        throw error;
      }
      return submitForward(request, envelope);
    }
    return submitForward(request, fromJsonInput(request.body, 'forward_backward_input', false));
  });

  app.post('/api/v1/forward', { schema: { body: ForwardBody, response: FutureReply } }, async (request) =>
    submitForward(request, fromJsonInput(request.body, 'forward_input', true)),
  );

  app.post('/api/v1/optim_step', { schema: { body: OptimStepBody, response: FutureReply } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'optim_step', () => ({
      op: { kind: 'optim_step', ...optimStepParams(body, found.optimizerConfig, found.modelId) },
      meta: { kind: 'optim_step' },
    }));
  });

  weightsRoutes(app, services);
}
