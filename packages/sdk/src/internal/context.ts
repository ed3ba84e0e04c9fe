/**
 * @module What the client classes share: the transport, the session and a few settings.
 */
import type { RequestOptions } from '../core/request-options.js';
import type { HttpRequest, Transport } from './transport.js';
import type { Session } from './session.js';

/** Shared by a `ServiceClient` and every client it creates. */
export interface ClientContext {
  transport: Transport;
  session: Session;
  /** HTTP timeout of each `retrieve_future` poll. */
  pollTimeoutMs: number;
}

/** Copies the per-call options onto a request. */
export function withOptions(req: HttpRequest, options: RequestOptions | undefined): HttpRequest {
  if (!options) return req;
  return {
    ...req,
    ...(options.signal !== undefined ? { signal: options.signal } : {}),
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.maxRetries !== undefined ? { maxRetries: options.maxRetries } : {}),
    ...(options.headers !== undefined ? { headers: { ...req.headers, ...options.headers } } : {}),
  };
}
