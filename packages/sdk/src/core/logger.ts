/**
 * @module The `logger` option: where a client reports what it handles without throwing.
 */

/**
 * Receives the client's log lines: `warn` for what it recovered from (a retried request, a failed
 * heartbeat), `debug` for each HTTP exchange. `console` fits; so does a wrapper around pino or
 * winston. The default is silent.
 *
 * @example
 * const service = new ServiceClient({ logger: console });
 * const quiet = new ServiceClient({ logger: { debug: () => {}, warn: (msg, fields) => console.warn(msg, fields) } });
 */
export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}
