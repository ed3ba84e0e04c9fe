/**
 * @module `ServiceClient`: the entry point. It owns the connection settings and the session, and
 * creates training, sampling and REST clients.
 */
import { InvalidArgumentError, LatheError } from './errors.js';
import type { Logger } from './logger.js';
import type { RequestOptions } from './request-options.js';
import { RestClient } from './rest-client.js';
import { createSamplingSession, SamplingClient, type SamplingClientTarget } from './sampling-client.js';
import { TrainingClient } from './training-client.js';
import type { GetServerCapabilitiesResponse, OptimizerConfig } from './types.js';
import * as api from '../internal/api.js';
import type { ClientContext } from '../internal/context.js';
import { retrieveFuture } from '../internal/futures.js';
import { Session, type SessionFinishReason } from '../internal/session.js';
import { Transport } from '../internal/transport.js';
import { SDK_VERSION, WIRE_SDK_VERSION } from '../version.js';

/**
 * Settings of a {@link ServiceClient}. Everything is optional: the base URL comes from
 * `LATHE_BASE_URL` or `TINKER_BASE_URL` (default `http://127.0.0.1:8000`, where `lathe serve`
 * listens), the key from `LATHE_API_KEY` or `TINKER_API_KEY`.
 *
 * @example
 * const service = new ServiceClient({ baseUrl: 'http://127.0.0.1:8000', apiKey: 'tml-…', maxRetries: 3 });
 */
export interface ClientOptions {
  /** The server's URL; `/api/v1/…` is appended (a path prefix is kept). */
  baseUrl?: string;
  /** The API key, sent as `X-API-Key`. */
  apiKey?: string;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Limit of each HTTP request, per attempt (default 60 000 ms). */
  timeoutMs?: number;
  /** Retries of a failed request: connection errors, timeouts, 408, 429, 5xx (default 6). */
  maxRetries?: number;
  /** First retry delay; it doubles per retry, with jitter (default 500 ms). */
  initialRetryDelayMs?: number;
  /** Longest retry delay (default 10 000 ms). */
  maxRetryDelayMs?: number;
  /** HTTP timeout of each `retrieve_future` long poll; must exceed the server's hold (default 45 000 ms). */
  pollTimeoutMs?: number;
  /** Session heartbeat period; 0 turns heartbeats off (default 10 000 ms). */
  heartbeatIntervalMs?: number;
  /** Headers added to every request. */
  defaultHeaders?: Record<string, string>;
  /** Stored with the session. */
  userMetadata?: Record<string, string>;
  /** Stored with the session. */
  tags?: string[];
  /** Stored with the session (default `TINKER_PROJECT_ID`). */
  projectId?: string;
  /**
   * How retries and future polls wait `ms` (default: a timer that rejects with `APIUserAbortError`
   * when `signal` fires). Tests inject one that records the delays instead of waiting.
   *
   * @example
   * const waits: number[] = [];
   * new ServiceClient({ sleep: async (ms) => void waits.push(ms) });
   */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /**
   * Where the client reports what it recovers from without throwing (retried requests, failed
   * heartbeats: `warn`) and each HTTP exchange (`debug`). Default: silent.
   *
   * @example
   * new ServiceClient({ logger: console });
   */
  logger?: Logger;
}

/**
 * Arguments of `createLoraTrainingClient`.
 *
 * @example
 * await service.createLoraTrainingClient({ baseModel: 'lathe/tiny-qwen3', rank: 16, seed: 0 });
 */
export interface LoraTrainingClientArgs {
  /** The model to fine-tune, as `getServerCapabilities` names it. */
  baseModel: string;
  /** LoRA rank, a power of 2 (default 32). */
  rank?: number;
  /** Seed of the adapter's initialisation. */
  seed?: number;
  /** Adapt the MLP layers (default true). */
  trainMlp?: boolean;
  /** Adapt the attention layers (default true). */
  trainAttn?: boolean;
  /** Adapt the unembedding (default true). */
  trainUnembed?: boolean;
  /** Stored with the training run. */
  userMetadata?: Record<string, string>;
  /** The run's optimizer, fixed for its life (default AdamW; Dimuon steps need `{ type: 'dimuon' }`). */
  optimizerConfig?: OptimizerConfig;
}

/**
 * Options of `copyWeights`.
 *
 * @example
 * await service.copyWeights(path, { ttlSeconds: 86_400 });
 */
export interface CopyWeightsOptions extends RequestOptions {
  /** Delete the copy after this many seconds (default: keep; the source's expiry is not inherited). */
  ttlSeconds?: number;
}

export type { SessionFinishReason };

/**
 * Options of `createTrainingClientFromState*`.
 *
 * @example
 * await service.createTrainingClientFromState(path, { userMetadata: { resumed: 'yes' } });
 */
export interface FromStateOptions extends RequestOptions {
  /** Override the checkpoint's base model. */
  baseModel?: string;
  userMetadata?: Record<string, string>;
}

/** Reads an environment variable where there is one (Node, Deno, Bun); empty counts as unset. */
function readEnv(name: string): string | undefined {
  const env = typeof process !== 'undefined' ? (process.env as Record<string, string | undefined> | undefined) : undefined;
  const value = env?.[name];
  return value === undefined || value === '' ? undefined : value;
}

/** The base URL to use and where it came from: the option, an environment variable, or the default. */
function baseUrlSetting(option: string | undefined): [string, string] {
  if (option !== undefined) return [option, 'the baseUrl option'];
  for (const name of ['LATHE_BASE_URL', 'TINKER_BASE_URL']) {
    const value = readEnv(name);
    if (value !== undefined) return [value, name];
  }
  return ['http://127.0.0.1:8000', 'the default'];
}

/**
 * The base URL with exactly one trailing slash, after checking that it is an absolute `http:` or
 * `https:` URL (`127.0.0.1:8000` or `localhost:8000` would otherwise fail only at the first
 * request, as a connection error retried several times). `source` names where it came from.
 */
export function normalizeBaseUrl(url: string, source: string): string {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  if (parsed === undefined || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') || parsed.host === '') {
    throw new InvalidArgumentError(
      `Invalid base URL ${JSON.stringify(url)} (from ${source}): expected an absolute http:// or https:// URL, e.g. http://127.0.0.1:8000`,
    );
  }
  return url.replace(/\/+$/, '') + '/';
}

/**
 * The entry point: holds the server address and key, and creates the other clients. It makes no
 * request until first used; the first training or sampling call starts a session, which a
 * heartbeat keeps alive until {@link close}.
 *
 * @example
 * import { ServiceClient, ModelInput } from '@lathe/sdk';
 *
 * const service = new ServiceClient(); // LATHE_BASE_URL, LATHE_API_KEY
 * const training = await service.createLoraTrainingClient({ baseModel: 'lathe/tiny-qwen3', rank: 8 });
 * await training.forwardBackward(data, 'cross_entropy');
 * await training.optimStep({ learningRate: 1e-4 });
 * const sampler = await training.saveWeightsAndGetSamplingClient();
 * const res = await sampler.sample({ prompt: ModelInput.fromInts([9707]), samplingParams: { maxTokens: 8 } });
 * await service.close();
 */
export class ServiceClient {
  readonly #ctx: ClientContext;

  /**
   * @throws {LatheError} when no API key is given or found in the environment;
   *   {@link InvalidArgumentError} when the base URL is not an absolute `http:` or `https:` URL.
   * @example
   * const service = new ServiceClient({ baseUrl: 'http://127.0.0.1:8000', apiKey: process.env.LATHE_API_KEY });
   */
  constructor(options: ClientOptions = {}) {
    const apiKey = options.apiKey ?? readEnv('LATHE_API_KEY') ?? readEnv('TINKER_API_KEY');
    if (!apiKey) throw new LatheError('No API key: pass { apiKey } or set LATHE_API_KEY (or TINKER_API_KEY).');
    const [baseUrl, baseUrlSource] = baseUrlSetting(options.baseUrl);
    const fetchImpl = options.fetch ?? (globalThis.fetch as typeof fetch | undefined);
    if (!fetchImpl) throw new LatheError('No fetch: pass { fetch } on runtimes without a global fetch.');
    const transport = new Transport({
      baseUrl: normalizeBaseUrl(baseUrl, baseUrlSource),
      apiKey,
      // Unbound `fetch` throws "Illegal invocation" in browsers.
      fetch: options.fetch ?? ((input, init) => fetchImpl(input, init)),
      timeoutMs: options.timeoutMs ?? 60_000,
      maxRetries: options.maxRetries ?? 6,
      initialRetryDelayMs: options.initialRetryDelayMs ?? 500,
      maxRetryDelayMs: options.maxRetryDelayMs ?? 10_000,
      defaultHeaders: { 'x-lathe-sdk': `typescript/${SDK_VERSION}`, ...options.defaultHeaders },
      sleep: options.sleep,
      logger: options.logger,
    });
    const session = new Session(transport, {
      sdkVersion: WIRE_SDK_VERSION,
      tags: options.tags ?? (readEnv('TINKER_TAGS')?.split(',').map((t) => t.trim()).filter(Boolean) ?? []),
      userMetadata: options.userMetadata ?? {},
      projectId: options.projectId ?? readEnv('TINKER_PROJECT_ID'),
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? 10_000,
    });
    this.#ctx = { transport, session, pollTimeoutMs: options.pollTimeoutMs ?? 45_000 };
  }

  /**
   * The base URL requests go to (with a trailing `/`).
   *
   * @example
   * new ServiceClient({ baseUrl: 'http://h:8000', apiKey: 'tml-x' }).baseUrl; // 'http://h:8000/'
   */
  get baseUrl(): string {
    return this.#ctx.transport.config.baseUrl;
  }

  /**
   * The session id, once the first training or sampling call started the session.
   *
   * @example
   * await service.createLoraTrainingClient({ baseModel });
   * service.sessionId; // '08b9…'
   */
  get sessionId(): string | undefined {
    return this.#ctx.session.sessionId;
  }

  /**
   * The models this server trains and samples, with their context lengths.
   *
   * @example
   * const { supportedModels } = await service.getServerCapabilities();
   * console.log(supportedModels.map((m) => `${m.modelName} (${m.maxContextLength})`));
   */
  async getServerCapabilities(options?: RequestOptions): Promise<GetServerCapabilitiesResponse> {
    return api.getServerCapabilities(this.#ctx.transport, options);
  }

  /**
   * Creates a LoRA adapter on `baseModel` and returns its training client, once the server has
   * created it.
   *
   * @example
   * const training = await service.createLoraTrainingClient({ baseModel: 'lathe/tiny-qwen3', rank: 8, seed: 0 });
   * training.modelId; // '<session>:train:0'
   */
  async createLoraTrainingClient(args: LoraTrainingClientArgs, options?: RequestOptions): Promise<TrainingClient> {
    const { sessionId, config } = await this.#ctx.session.ensure(options?.signal);
    const modelSeqId = this.#ctx.session.nextModelSeqId();
    const submitted = await api.createModel(this.#ctx.transport, { ...args, sessionId, modelSeqId }, options);
    const result = await retrieveFuture(this.#ctx.transport, submitted.requestId, { kind: 'json', requestType: 'CreateModel', pollTimeoutMs: this.#ctx.pollTimeoutMs, signal: options?.signal });
    return new TrainingClient(this.#ctx, config, api.createModelResult(result, submitted.modelId));
  }

  async #fromState(path: string, optimizer: boolean, options: FromStateOptions | undefined): Promise<TrainingClient> {
    const info = await this.createRestClient().getWeightsInfoByTinkerPath(path, options);
    if (info.loraRank === undefined) throw new LatheError(`${path} does not say its LoRA rank; cannot recreate its adapter`);
    const args: LoraTrainingClientArgs = {
      baseModel: options?.baseModel ?? info.baseModel,
      rank: info.loraRank,
      trainUnembed: info.trainUnembed ?? true,
      trainMlp: info.trainMlp ?? true,
      trainAttn: info.trainAttn ?? true,
      // The new run must use the checkpoint's optimizer: a run's optimizer never changes.
      ...(info.optimizerConfig.type !== 'adamw' ? { optimizerConfig: info.optimizerConfig } : {}),
    };
    if (options?.userMetadata) args.userMetadata = options.userMetadata;
    const training = await this.createLoraTrainingClient(args, options);
    await (optimizer ? training.loadStateWithOptimizer(path, options) : training.loadState(path, options));
    return training;
  }

  /**
   * A new training run that starts from a checkpoint's weights (optimizer state fresh).
   *
   * @example
   * const resumed = await service.createTrainingClientFromState('tinker://S:train:0/weights/step-100');
   */
  createTrainingClientFromState(path: string, options?: FromStateOptions): Promise<TrainingClient> {
    return this.#fromState(path, false, options);
  }

  /**
   * A new training run that starts from a checkpoint's weights and optimizer state (exact resume).
   *
   * @example
   * const resumed = await service.createTrainingClientFromStateWithOptimizer('tinker://S:train:0/weights/step-100');
   */
  createTrainingClientFromStateWithOptimizer(path: string, options?: FromStateOptions): Promise<TrainingClient> {
    return this.#fromState(path, true, options);
  }

  /**
   * A sampler on saved weights (`{ modelPath: 'tinker://…' }`) or on a base model (`{ baseModel }`).
   *
   * @example
   * const base = await service.createSamplingClient({ baseModel: 'lathe/tiny-qwen3' });
   * const tuned = await service.createSamplingClient({ modelPath: 'tinker://S:train:0/sampler_weights/final' });
   */
  async createSamplingClient(target: SamplingClientTarget, options?: RequestOptions): Promise<SamplingClient> {
    return new SamplingClient(this.#ctx, await createSamplingSession(this.#ctx, target, options));
  }

  /**
   * Copies a checkpoint of yours to a new `tinker://` path (in a new, non-trainable run of this
   * session), e.g. to keep it past the source's TTL or its run's deletion. Answered at once.
   *
   * @example
   * const { tinkerPath } = await service.copyWeights('tinker://S:train:0/weights/step-100', { ttlSeconds: 7 * 86_400 });
   * const resumed = await service.createTrainingClientFromState(tinkerPath);
   */
  async copyWeights(path: string, options?: CopyWeightsOptions): Promise<{ tinkerPath: string }> {
    const { sessionId } = await this.#ctx.session.ensure(options?.signal);
    const body = { sessionId, modelSeqId: this.#ctx.session.nextModelSeqId(), sourcePath: path, ttlSeconds: options?.ttlSeconds };
    return { tinkerPath: await api.copyWeights(this.#ctx.transport, body, options) };
  }

  /**
   * A client for runs, checkpoints, sessions and samplers (no session needed).
   *
   * @example
   * const rest = service.createRestClient();
   * await rest.listTrainingRuns();
   */
  createRestClient(): RestClient {
    return new RestClient(this.#ctx.transport);
  }

  /**
   * Stops the heartbeat and finishes the session on the server (`POST /sessions/{id}/finish`, as
   * the Python SDK's `close()` since 0.32) with `reason` (default `'success'`). Futures already
   * submitted still resolve; new training or sampling calls fail. Finishing twice does nothing.
   *
   * @example
   * try { await train(service); await service.finish(); } catch (e) { await service.finish('errored'); throw e; }
   */
  finish(reason: SessionFinishReason = 'success', detail?: string): Promise<void> {
    return this.#ctx.session.close(reason, detail);
  }

  /**
   * {@link finish} with reason `'success'`.
   *
   * @example
   * try { await train(service); } finally { await service.close(); }
   */
  close(): Promise<void> {
    return this.finish();
  }
}
