/**
 * @module The server's logger: one pino instance, shared by Fastify (request logs) and the parts
 * behind it (scheduler, recovery, worker port), each through a child naming the part. Written to
 * stderr, so a command that embeds a server keeps stdout for its own output.
 */
import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

/**
 * The logger of a server: `logger` itself when given, else a new one on stderr that logs requests
 * (`true`) or only warnings and errors (`false`, the default).
 *
 * @example
 * const log = serverLogger(false);
 * log.child({ part: 'lane' }).error({ err }, 'scheduling failed');
 */
export function serverLogger(logger: boolean | Logger = false): Logger {
  if (typeof logger !== 'boolean') return logger;
  return pino({ level: logger ? 'info' : 'warn' }, pino.destination(2));
}

let fallback: Logger | undefined;

/** Warnings and errors on stderr: for parts built without a server's logger (tools, tests). */
export function defaultLogger(): Logger {
  fallback ??= serverLogger(false);
  return fallback;
}
