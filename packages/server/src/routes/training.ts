/**
 * @module Training runs: create, info, forward/backward, optimizer steps, checkpoints
 * (tinker-protocol.md §4.2–4.4). Every submit answers at once with a future.
 */
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { badRequest, HttpError, notFound } from '../http/errors.js';
import { checkpointDir, checkName, formatTinkerPath, parseTinkerPath, type CheckpointKind } from '../checkpoints/paths.js';
import { prepareData } from '../protocol/datums.js';
import { parseOptimizerConfig, optimStepParams } from '../protocol/optimizers.js';
import { decodeForwardBackwardEnvelope, ProtoDecodeError, type ForwardBackwardEnvelope, type WireDatum } from '@lathe/protocol';
import { modelInputFromJson, tensorFromJson } from '../protocol/proto.js';
import {
  CopyWeightsBody,
  CreateModelBody,
  ForwardBackwardBody,
  ForwardBody,
  LoadWeightsBody,
  ModelIdBody,
  OptimStepBody,
  SaveWeightsBody,
  SaveWeightsExternalBody,
  SaveWeightsForSamplerBody,
  WeightsInfoBody,
  type LoraConfigWire,
} from '../protocol/schemas.js';
import type { TrainingOp } from '../scheduler/lane.js';
import { FutureReply } from './responses.js';
import type { JobMeta, Services } from '../services.js';
import type { RunRow } from '../store/index.js';
import { owner, type TypedApp } from './context.js';

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

/** A checkpoint's `user_metadata`: string values only (the SDK validates them so when it reads them back). */
function checkMetadata(metadata: Record<string, unknown> | null | undefined): Record<string, string> | null {
  if (!metadata) return null;
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') throw badRequest(`user_metadata['${key}'] must be a string, got ${JSON.stringify(value)}`, 'invalid_user_metadata');
  }
  return metadata as Record<string, string>;
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
