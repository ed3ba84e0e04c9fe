/**
 * @module Training runs: create, info, forward/backward, optimizer steps, checkpoints
 * (tinker-protocol.md §4.2–4.4). Every submit answers at once with a future.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { badRequest, HttpError, notFound } from '../http/errors.js';
import { checkpointDir, checkName, formatTinkerPath, parseTinkerPath, type CheckpointKind } from '../checkpoints/paths.js';
import { prepareData } from '../protocol/datums.js';
import { decodeForwardBackwardRequest, modelInputFromJson, ProtoDecodeError, tensorFromJson, type ForwardBackwardRequestMsg, type WireDatum } from '../protocol/proto.js';
import {
  CreateModelBody,
  ForwardBackwardBody,
  ForwardBody,
  LoadWeightsBody,
  ModelIdBody,
  OptimStepBody,
  SaveWeightsBody,
  SaveWeightsForSamplerBody,
  WeightsInfoBody,
  type LoraConfigWire,
} from '../protocol/schemas.js';
import type { TrainingOp } from '../scheduler/lane.js';
import type { JobMeta, Services } from '../services.js';
import type { RunRow } from '../store/index.js';
import { owner, type TypedApp } from './context.js';

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

const ADAM_KEYS = ['learning_rate', 'beta1', 'beta2', 'eps', 'weight_decay', 'grad_clip_norm'] as const;

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

export function trainingRoutes(app: TypedApp, services: Services): void {
  const { store } = services;

  async function run(request: { owner: string | null }, modelId: string): Promise<RunRow> {
    const found = await store.runs.get(modelId, owner(request as never));
    if (!found) throw notFound('training run', modelId);
    return found;
  }

  app.post('/api/v1/create_model', { schema: { body: CreateModelBody } }, async (request) => {
    const body = request.body;
    const who = owner(request);
    const session = await store.sessions.get(body.session_id, who);
    if (!session) throw notFound('session', body.session_id);
    await services.knownModel(body.base_model);
    const lora = checkLoraConfig(body.lora_config);
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
      now: Date.now(),
    }));
    if (!existing) services.lane(created.baseModel).registerRun(modelId);
    const requestId = await services.submitTraining(who, created, 0, { kind: 'create_adapter', lora }, { kind: 'create_model' });
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

  app.post('/api/v1/unload_model', { schema: { body: ModelIdBody } }, async (request) => {
    const found = await run(request, request.body.model_id);
    // Unload carries no seq_id of its own: it goes after everything logged for the run (and after
    // what the lane expects, should old rows have been pruned), so it never aliases another request.
    const logged = await store.requests.maxSeq(found.modelId);
    const seq = Math.max(logged === null ? 0 : logged + 1, services.lane(found.baseModel).expectedSeq(found.modelId) ?? 0);
    const requestId = await services.submitTraining(owner(request), found, seq, { kind: 'drop_adapter' }, { kind: 'unload_model' });
    return { request_id: requestId, model_id: found.modelId };
  });

  /**
   * Submits a training request whose op `build` checks and makes. Once the run and `seq_id` are
   * known, a refusal (a 4xx from `build`) still takes that `seq_id`'s place in the run's order,
   * as the SDK has used it up (see `Services.refuseTraining`): later requests do not wait for it.
   */
  async function submitChecked(
    request: { owner: string | null },
    found: RunRow,
    seqId: number,
    kind: JobMeta['kind'],
    build: () => Promise<{ op: TrainingOp; meta: JobMeta }> | { op: TrainingOp; meta: JobMeta },
  ): Promise<{ request_id: string; model_id: string }> {
    const who = owner(request as never);
    let job: { op: TrainingOp; meta: JobMeta };
    try {
      job = await build();
    } catch (error) {
      if (!(error instanceof HttpError) || error.statusCode >= 500) throw error;
      return { request_id: await services.refuseTraining(who, found, seqId, kind, error), model_id: found.modelId };
    }
    return { request_id: await services.submitTraining(who, found, seqId, job.op, job.meta), model_id: found.modelId };
  }

  /** A forward(_backward) submit: its address first, its data read (and checked) once the run is known. */
  interface ForwardSubmit {
    modelId: string;
    seqId: number;
    forwardOnly: boolean;
    read: () => Pick<ForwardBackwardRequestMsg, 'data' | 'lossFn' | 'lossFnConfig'>;
  }

  async function submitForward(request: { owner: string | null }, submit: ForwardSubmit): Promise<{ request_id: string; model_id: string }> {
    checkSeqId(submit.seqId, 1);
    const found = await run(request, submit.modelId);
    const kind = submit.forwardOnly ? 'forward' : 'forward_backward';
    return submitChecked(request, found, submit.seqId, kind, async () => {
      const msg = submit.read();
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
    if (!isRecord(config) || !Object.values(config).every((v) => typeof v === 'number')) {
      throw badRequest(`${inputKey}.loss_fn_config must be an object of numbers`, 'invalid_request');
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
  app.post('/api/v1/forward_backward', { schema: { body: { content: { 'application/json': { schema: ForwardBackwardBody } } } } }, async (request) => {
    if (request.body instanceof Uint8Array) {
      let msg: ForwardBackwardRequestMsg;
      try {
        msg = decodeForwardBackwardRequest(request.body);
      } catch (error) {
        if (error instanceof ProtoDecodeError) throw badRequest(error.message, 'invalid_protobuf');
        throw error;
      }
      return submitForward(request, { modelId: msg.modelId, seqId: msg.seqId, forwardOnly: msg.forwardOnly, read: () => msg });
    }
    return submitForward(request, fromJsonInput(request.body, 'forward_backward_input', false));
  });

  app.post('/api/v1/forward', { schema: { body: ForwardBody } }, async (request) =>
    submitForward(request, fromJsonInput(request.body, 'forward_input', true)),
  );

  app.post('/api/v1/optim_step', { schema: { body: OptimStepBody } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'optim_step', () => {
      const adam: Record<string, number> = {};
      for (const key of ADAM_KEYS) {
        const value = body.adam_params[key];
        if (value === undefined || value === null) continue;
        if (!Number.isFinite(value)) throw badRequest(`adam_params.${key} must be a finite number`, 'invalid_adam_params');
        adam[key] = value;
      }
      if ((adam['learning_rate'] ?? 0) < 0) throw badRequest('adam_params.learning_rate must be >= 0', 'invalid_adam_params');
      return { op: { kind: 'optim_step', adamParams: adam }, meta: { kind: 'optim_step' } };
    });
  });

  /**
   * The job that saves the adapter into the checkpoint store (recorded when done). A name taken
   * without `overwrite` is refused (a retry of the save that took it gets that save's future).
   */
  async function saveJob(
    request: { owner: string | null },
    found: RunRow,
    kind: CheckpointKind,
    name: string,
    ttlSeconds: number | null | undefined,
    sampler: { samplerId: string; sessionId: string; baseModel: string } | null = null,
    overwrite = true,
  ): Promise<{ op: TrainingOp; meta: JobMeta }> {
    checkName(name);
    if (!overwrite && (await store.checkpoints.get(found.modelId, `${kind}/${name}`, owner(request as never)))) {
      throw badRequest(`checkpoint ${formatTinkerPath(found.modelId, kind, name)} already exists; pass overwrite=true to replace it`, 'already_exists');
    }
    const storagePath = checkpointDir(services.dataDir, found.modelId, kind, name);
    mkdirSync(path.dirname(storagePath), { recursive: true });
    return {
      op: { kind: 'save_adapter', path: storagePath, includeOptimizer: kind === 'weights' },
      meta: {
        kind: 'save',
        checkpointType: kind === 'weights' ? 'training' : 'sampler',
        checkpointId: `${kind}/${name}`,
        tinkerPath: formatTinkerPath(found.modelId, kind, name),
        storagePath,
        ttlSeconds: ttlSeconds ?? null,
        ephemeral: sampler !== null,
        sampler,
      },
    };
  }

  app.post('/api/v1/save_weights', { schema: { body: SaveWeightsBody } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'save', () => saveJob(request, found, 'weights', body.path, body.ttl_seconds, null, body.overwrite ?? false));
  });

  app.post('/api/v1/save_weights_for_sampler', { schema: { body: SaveWeightsForSamplerBody } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'save', () => {
      if (body.path !== undefined) return saveJob(request, found, 'sampler_weights', body.path, body.ttl_seconds);
      if (body.sampling_session_seq_id === undefined) throw badRequest('either path or sampling_session_seq_id is required', 'invalid_request');
      // Unnamed: ephemeral weights plus a sampling session on them (save_weights_and_get_sampling_client).
      const samplerId = `${found.sessionId}:sample:${body.sampling_session_seq_id}`;
      const name = `ephemeral-${body.sampling_session_seq_id}-seq${body.seq_id}`;
      return saveJob(request, found, 'sampler_weights', name, body.ttl_seconds ?? 24 * 3600, { samplerId, sessionId: found.sessionId, baseModel: found.baseModel });
    });
  });

  app.post('/api/v1/load_weights', { schema: { body: LoadWeightsBody } }, async (request) => {
    const body = request.body;
    const found = await run(request, body.model_id);
    return submitChecked(request, found, body.seq_id, 'load_weights', async () => {
      const parsed = parseTinkerPath(body.path);
      const checkpoint = await store.checkpoints.get(parsed.modelId, parsed.checkpointId, owner(request));
      if (!checkpoint) throw notFound('checkpoint', body.path);
      if (body.optimizer && checkpoint.checkpointType === 'sampler') {
        throw badRequest(`${body.path} is a sampler checkpoint and holds no optimizer state; use load_state without optimizer or a weights/ checkpoint`, 'no_optimizer_state');
      }
      const source = await store.runs.get(parsed.modelId, checkpoint.owner);
      if (source && source.baseModel !== found.baseModel) {
        throw badRequest(`${body.path} was trained on ${source.baseModel}, but ${found.modelId} uses ${found.baseModel}`, 'base_model_mismatch');
      }
      return { op: { kind: 'load_adapter', path: checkpoint.storagePath, includeOptimizer: body.optimizer ?? false }, meta: { kind: 'load_weights', path: body.path } };
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
    };
  });
}
