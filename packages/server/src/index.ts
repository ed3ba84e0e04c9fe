/**
 * @module @lathe/server: the Tinker-compatible HTTP API, scheduler, store and worker pool.
 *
 * @example
 * import { createServer } from '@lathe/server';
 * const server = await createServer({ dataDir: '.lathe' });
 * await server.app.listen({ port: 8000 });
 */
export { createServer, defaultDatabaseUrl, type LatheServer, type ServerOptions } from './app.js';
export type { Logger } from './log.js';
export type { OrderingOptions, SchedulingOptions, Timers } from './scheduler/jobs.js';
export { openStore, type Store } from './store/index.js';
export { DataDirError, LOCK_FILE, lockDataDir, prepareDataDir } from './datadir.js';

// Compute workers: frames and tensors on the wire, clients, processes, the pool, remote workers.
export { encodeFrame, FrameReader, MAX_FRAME_BYTES } from './worker/frames.js';
export { floatsToWire, fromWire, tokensToWire, toWire, wireToNumbers, type WireDType, type WireTensor } from './worker/tensor.js';
export { WorkerClient, WorkerConnectionError, WorkerRequestError, type WorkerAddress } from './worker/client.js';
export { toWorkerRequest, type ForwardItem, type TrainingOp, type WorkerCalls, type WorkerDatum, type WorkerOp, type WorkerRequest } from './worker/ops.js';
export { pythonExecutable, REPO_ROOT, startLocalWorker, workerCommand, workerProcesses, type LocalWorker, type LocalWorkerOptions } from './worker/process.js';
export { WorkerPool, WorkerUnavailableError, type CrashListener, type WorkerInfo, type WorkerPoolOptions } from './worker/pool.js';
export { ModelCatalogue, parseAlias, readModelsConfig, scanModels, type CatalogueOptions, type ModelEntry, type ScanResult } from './worker/catalogue.js';
export { generateWorkerToken, WorkerListener, type RemoteRegistration, type WorkerDevice, type WorkerListenerOptions } from './worker/remote.js';
