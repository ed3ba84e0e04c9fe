/**
 * @module Builds a Lathe server: the Fastify app with every route, over a store and a worker pool.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyRequest } from 'fastify';
import { ArchiveSigner } from './checkpoints/signing.js';
import { lockDataDir, prepareDataDir, type DataDirError } from './datadir.js';
import { apiKeyAuth } from './http/auth.js';
import { HttpError } from './http/errors.js';
import { useJsonBodies } from './http/json.js';
import { pathRedactor } from './http/redact.js';
import { serverLogger, type Logger } from './log.js';
import { decompressZstd, ZstdDecodeError } from './protocol/zstd.js';
import { dashboardRoutes } from './routes/dashboard.js';
import { restRoutes } from './routes/rest.js';
import { DEFAULT_LONG_POLL_MS, samplingRoutes } from './routes/sampling.js';
import { serviceRoutes } from './routes/service.js';
import { trainingRoutes } from './routes/training.js';
import type { TypedApp } from './routes/context.js';
import type { SchedulingOptions } from './scheduler/lane.js';
import { Services } from './services.js';
import { openStore, StoreConflictError } from './store/index.js';
import { ModelCatalogue, readModelsConfig, scanModels, type ModelEntry } from './worker/catalogue.js';
import { REPO_ROOT } from './worker/process.js';
import { WorkerPool } from './worker/pool.js';
import { WorkerListener, type RemoteRegistration } from './worker/remote.js';

/** Options for {@link createServer}. */
export interface ServerOptions {
  /** Holds `lathe.db` (unless `databaseUrl` is set), checkpoints and the signing secret. */
  dataDir: string;
  /** `postgres://...` for PostgreSQL; default: SQLite at `<dataDir>/lathe.db`. */
  databaseUrl?: string;
  /** Where models are found and tiny models are written; default `<dataDir>/models`. */
  modelsDir?: string;
  /** A fixed model catalogue (no scanning); default: ask the worker's registry, and again for unknown names. */
  models?: ModelEntry[];
  /**
   * Model names served from a folder or another model (`{'Qwen/Qwen3-8B': '/srv/qwen3-8b'}`), on top
   * of those in `<dataDir>/models.json` (`{"aliases": {...}}`).
   */
  modelAliases?: Record<string, string>;
  /** How long `retrieve_future` holds a poll (ms). */
  longPollMs?: number;
  /** Sessions without a heartbeat for this long are finished (ms). */
  sessionTimeoutMs?: number;
  /** Largest accepted request body (bytes). */
  bodyLimitBytes?: number;
  /** Largest accepted protobuf body (bytes), after zstd decompression; default 64 MiB. */
  maxProtobufBytes?: number;
  /** Sampling requests queued per base model before `asample` answers 429. */
  maxQueuedSamples?: number;
  /** The clock of time-based caches (API-key lookups); default `Date.now`. Tests inject one. */
  clock?: () => number;
  /**
   * Limits and timeout for training requests waiting for a missing earlier `seq_id`, and each
   * lane's fair-scheduling limits (cycle token budgets, per-key queue bounds).
   */
  ordering?: SchedulingOptions;
  /**
   * Snapshot each run's adapter and optimizer state every this many optimizer steps (default 10).
   * After a worker crash a run is rebuilt from its snapshot plus the steps logged since.
   */
  snapshotEvery?: number;
  /**
   * The server's pino logger (requests, and errors it survives), or whether a new one on stderr logs
   * requests (`true`) or only warnings and errors (`false`, the default).
   */
  logger?: boolean | Logger;
  /**
   * Open a TCP port that remote workers dial (`lathe worker --connect HOST:PORT`); 0 picks a free
   * one (see `LatheServer.workerPort`). Default: no port, local workers only.
   */
  workerPort?: number;
  /** Interface of the worker port; default `0.0.0.0` (remote machines connect to it). */
  workerHost?: string;
  /** The token remote workers must send; required with `workerPort`. */
  workerToken?: string;
  /** Start local worker processes for models no remote worker serves; default true. */
  localWorkers?: boolean;
  /** Without local workers: how long a request waits for a remote worker to connect (ms); default 60 000. */
  remoteWaitMs?: number;
  /** Lines worth an operator's attention (a refused worker); default: the logger, as warnings. */
  log?: (line: string) => void;
  /**
   * Adapters each worker keeps on its compute device (weights, gradients, optimizer state); the least
   * recently used idle ones move to host memory. Default: no limit.
   */
  maxResidentAdapters?: number;
  /** Adapters each worker keeps in host memory once moved off the device; beyond that they go to disk. Default: no limit. */
  maxHostAdapters?: number;
}

/**
 * A built server. `close()` stops gracefully: new submits get 503, the worker calls in flight
 * finish and are recorded, queued requests stay in the log for the next server; then the HTTP
 * listener, the workers and the database close.
 */
export interface LatheServer {
  app: TypedApp;
  services: Services;
  /** The port remote workers dial, when `workerPort` was given. */
  workerPort?: number;
  close(): Promise<void>;
}

const DEFAULT_BODY_LIMIT = 256 * 1024 * 1024;
// The SDK sends at most ~5 MB per forward_backward chunk (fwdbwd_max_chunk_bytes_count), so this
// leaves ample room while bounding what a small zstd body may expand to.
const DEFAULT_PROTOBUF_LIMIT = 64 * 1024 * 1024;

/**
 * This server's id in a shared database: made once per data directory (`server-id`), so a restarted
 * server is the same server and resumes its own runs. The data dir lock keeps it to one live process.
 */
function serverIdentity(dataDir: string): string {
  const file = path.join(dataDir, 'server-id');
  if (!existsSync(file)) writeFileSync(file, `server-${randomBytes(6).toString('hex')}`);
  return readFileSync(file, 'utf8').trim();
}

/** Worker command-line flags for the placement limits in `options`. */
function placementFlags(options: ServerOptions): string[] {
  const limits = [['maxResidentAdapters', options.maxResidentAdapters, 1], ['maxHostAdapters', options.maxHostAdapters, 0]] as const;
  for (const [name, value, min] of limits) {
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= min)) throw new Error(`${name} must be an integer >= ${min}, got ${value}`);
  }
  const flags: string[] = [];
  if (options.maxResidentAdapters !== undefined) flags.push('--max-resident-adapters', String(options.maxResidentAdapters));
  if (options.maxHostAdapters !== undefined) flags.push('--max-host-adapters', String(options.maxHostAdapters));
  return flags;
}

function signingSecret(dataDir: string): Buffer {
  const file = path.join(dataDir, 'archive-signing.key');
  if (!existsSync(file)) writeFileSync(file, randomBytes(32).toString('hex'), { mode: 0o600 });
  return Buffer.from(readFileSync(file, 'utf8').trim(), 'hex');
}

/**
 * Where a server keeps its database: `databaseUrl` if given, else SQLite at `<dataDir>/lathe.db`.
 *
 * @example
 * const store = await openStore(defaultDatabaseUrl('.lathe')); // .lathe/lathe.db
 */
export function defaultDatabaseUrl(dataDir: string, databaseUrl?: string): string {
  return databaseUrl ?? path.join(dataDir, 'lathe.db');
}

/**
 * Builds the server (not yet listening). Takes the data directory's lock until `close()`; throws
 * a {@link DataDirError} (one sentence) when the directory cannot be created or written, or when
 * another live server holds it.
 *
 * @example
 * const server = await createServer({ dataDir: '.lathe' });
 * await server.app.listen({ host: '127.0.0.1', port: 8000 });
 */
export async function createServer(options: ServerOptions): Promise<LatheServer> {
  if (options.workerPort !== undefined && !options.workerToken) throw new Error('workerPort needs a workerToken (remote workers must prove they belong to this server)');
  prepareDataDir(options.dataDir);
  // One server per data directory: two would run the same logged requests twice.
  const unlock = lockDataDir(options.dataDir);
  try {
    return await buildServer(options, unlock);
  } catch (error) {
    unlock();
    throw error;
  }
}

/** The remote workers' port, when asked for. */
async function listenForWorkers(options: ServerOptions, log: Logger, onWorker: (registration: RemoteRegistration) => void): Promise<WorkerListener | undefined> {
  if (options.workerPort === undefined || !options.workerToken) return undefined; // createServer checked the token
  return WorkerListener.listen({
    host: options.workerHost ?? '0.0.0.0',
    port: options.workerPort,
    token: options.workerToken,
    onWorker,
    log: options.log ?? ((line) => log.warn(line)),
  });
}

async function buildServer(options: ServerOptions, unlock: () => void): Promise<LatheServer> {
  const modelsDir = options.modelsDir ?? path.join(options.dataDir, 'models');
  const workerArgs = placementFlags(options); // before anything is opened: it throws on bad limits
  const store = await openStore(defaultDatabaseUrl(options.dataDir, options.databaseUrl));
  const aliases = { ...readModelsConfig(options.dataDir), ...options.modelAliases };
  const catalogue = options.models ? ModelCatalogue.fixed(options.models) : await ModelCatalogue.open({ scan: (describe) => scanModels(modelsDir, describe), aliases });
  const redact = pathRedactor([
    ...Object.entries(aliases).map(([name, target]) => ({ path: target, label: `<model ${name}>` })),
    { path: modelsDir, label: '<models-dir>' },
    { path: options.dataDir, label: '<data-dir>' },
    { path: REPO_ROOT, label: '<lathe>' },
    { path: os.tmpdir(), label: '<tmp>' },
    { path: os.homedir(), label: '~' },
  ]);
  const pool = new WorkerPool({
    modelsDir,
    workerArgs,
    source: (model) => catalogue.source(model),
    ...(options.localWorkers !== undefined ? { localWorkers: options.localWorkers } : {}),
    ...(options.remoteWaitMs !== undefined ? { remoteWaitMs: options.remoteWaitMs } : {}),
  });
  const serverId = serverIdentity(options.dataDir);
  const logger = serverLogger(options.logger);
  const services = new Services({
    store,
    pool,
    catalogue,
    dataDir: options.dataDir,
    ordering: options.ordering ?? {},
    redact,
    serverId,
    logger,
    ...(options.maxQueuedSamples !== undefined ? { maxQueuedSamples: options.maxQueuedSamples } : {}),
    ...(options.snapshotEvery !== undefined ? { snapshotEvery: options.snapshotEvery } : {}),
  });
  await store.adoptUnowned(serverId);
  await services.resumeInterruptedRequests();
  const bodyLimit = options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT;

  // Signed archive tokens are long path parameters.
  const app = Fastify({
    // Typed as Fastify's base logger, so the app keeps the TypedApp shape the routes take.
    loggerInstance: logger as FastifyBaseLogger,
    bodyLimit,
    routerOptions: { maxParamLength: 2048 },
    // No type coercion: it would turn `seed: 0` into null or `ttl_seconds: null` into 0.
    ajv: { customOptions: { coerceTypes: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  // Protobuf bodies arrive raw, possibly zstd-compressed (only forward_backward uses them). A zstd
  // body is decoded a step at a time (other requests are served meanwhile) and capped once decoded.
  const protobufLimit = options.maxProtobufBytes ?? DEFAULT_PROTOBUF_LIMIT;
  app.addContentTypeParser('application/x-protobuf', { parseAs: 'buffer', bodyLimit: protobufLimit }, async (request: FastifyRequest, body: Buffer) => {
    if (request.headers['content-encoding'] !== 'zstd') return new Uint8Array(body);
    try {
      return await decompressZstd(body, protobufLimit);
    } catch (error) {
      const tooLarge = error instanceof ZstdDecodeError && error.code === 'limit_exceeded';
      throw new HttpError(tooLarge ? 413 : 400, tooLarge ? 'payload_too_large' : 'invalid_body', (error as Error).message);
    }
  });
  useJsonBodies(app, bodyLimit);

  app.setErrorHandler((error: FastifyError | HttpError, request, reply) => {
    if (error instanceof HttpError) {
      const body = error.toBody();
      body.error.message = redact(body.error.message);
      return reply.code(error.statusCode).headers(error.headers).send(body);
    }
    if (error instanceof StoreConflictError) {
      // Another key's id: answer exactly as for an unknown one.
      return reply.code(404).send(new HttpError(404, 'not_found', 'not found').toBody());
    }
    const status = error.statusCode ?? 500;
    if (status === 413 || error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      const limit = request.headers['content-type']?.startsWith('application/x-protobuf') ? protobufLimit : bodyLimit;
      return reply.code(413).send(new HttpError(413, 'payload_too_large', `request body exceeds ${limit} bytes`).toBody());
    }
    if (error.validation || (status >= 400 && status < 500)) {
      return reply.code(status === 500 ? 400 : status).send(new HttpError(status === 500 ? 400 : status, 'bad_request', redact(error.message)).toBody());
    }
    request.log.error(error);
    return reply.code(500).send(new HttpError(500, 'internal_error', `internal error: ${redact(error.message)}`).toBody());
  });
  app.setNotFoundHandler((request, reply) => reply.code(404).send(new HttpError(404, 'not_found', `no route ${request.method} ${request.url}`).toBody()));

  await app.register(swagger, {
    openapi: { info: { title: 'Lathe API (Tinker-compatible)', version: '0.1.0' } },
  });
  app.addHook('onRequest', apiKeyAuth(store.keys, options.clock));

  serviceRoutes(app, services);
  trainingRoutes(app, services);
  samplingRoutes(app, services, options.longPollMs ?? DEFAULT_LONG_POLL_MS);
  restRoutes(app, services, new ArchiveSigner(signingSecret(options.dataDir)));
  dashboardRoutes(app, services);
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  // Housekeeping: finish silent sessions, delete expired checkpoints.
  const sessionTimeoutMs = options.sessionTimeoutMs ?? 5 * 60 * 1000;
  const housekeeping = setInterval(() => {
    const now = Date.now();
    void (async () => {
      await store.sessions.expire(now - sessionTimeoutMs, now);
      for (const expired of await store.checkpoints.expired(now)) {
        await store.checkpoints.delete(expired.modelId, expired.checkpointId, expired.owner);
        rmSync(expired.storagePath, { recursive: true, force: true });
      }
    })().catch((error: unknown) => app.log.error(error));
  }, Math.min(30_000, sessionTimeoutMs));
  housekeeping.unref();

  await app.ready();
  // Last, so that nothing after it can fail and leave the port open. Interrupted requests resumed
  // above wait for remote workers to (re)connect here (WorkerPoolOptions.remoteWaitMs).
  let workers: WorkerListener | undefined;
  try {
    workers = await listenForWorkers(options, logger, (registration) => {
      catalogue.announce(registration.models);
      pool.attach(registration);
    });
  } catch (error) {
    clearInterval(housekeeping);
    await services.stop();
    await app.close();
    await pool.close();
    await store.close();
    throw new Error(`cannot open the worker port ${options.workerHost ?? '0.0.0.0'}:${options.workerPort}: ${(error as Error).message}`);
  }
  return {
    app,
    services,
    ...(workers ? { workerPort: workers.port } : {}),
    async close() {
      clearInterval(housekeeping);
      // No new remote workers from now on; the port is closed once their connections are (pool.close).
      const workersClosed = workers?.close();
      // Finish the worker calls in flight while the HTTP side still answers (submits with 503).
      await services.stop();
      await app.close();
      await pool.close();
      await workersClosed;
      await store.close();
      unlock();
    },
  };
}
