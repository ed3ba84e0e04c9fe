/**
 * @module @lathe/server: the Tinker-compatible HTTP API, scheduler, store and worker pool.
 * So far it holds the worker connection layer that everything above it is built on.
 */
export * from './worker/index.js';
