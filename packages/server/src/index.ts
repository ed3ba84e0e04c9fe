/**
 * @module @lathe/server: the Tinker-compatible HTTP API, scheduler, store and worker pool.
 */
export * from './worker/index.js';
export { createServer, defaultDatabaseUrl, type LatheServer, type ServerOptions } from './app.js';
export type { OrderingOptions, SchedulingOptions, Timers } from './scheduler/lane.js';
export { openStore, type Store } from './store/index.js';
export { DataDirError, LOCK_FILE, lockDataDir, prepareDataDir } from './datadir.js';
