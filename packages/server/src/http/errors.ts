/**
 * @module HTTP errors. Every error reply is `{error: {type, message, category}}`; `category` is
 * `user` when the caller sent something wrong and `server` when we failed.
 */

/** An error with an HTTP status, raised anywhere in a request handler. */
export class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    readonly type: string,
    message: string,
    readonly category: 'user' | 'server' = statusCode >= 500 ? 'server' : 'user',
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }

  toBody(): { error: { type: string; message: string; category: string } } {
    return { error: { type: this.type, message: this.message, category: this.category } };
  }
}

/** 400: the request is malformed or asks for something impossible. */
export const badRequest = (message: string, type = 'bad_request'): HttpError => new HttpError(400, type, message);
/** 401: no valid API key. */
export const unauthorized = (message = 'missing or invalid API key (send X-API-Key: tml-...)'): HttpError => new HttpError(401, 'unauthorized', message);
/** 404: unknown id, or one that belongs to another key (indistinguishable on purpose). */
export const notFound = (what: string, id: string): HttpError => new HttpError(404, 'not_found', `${what} ${JSON.stringify(id)} not found`);
/** 410: a future that expired or never existed, or a finished session. */
export const gone = (message: string): HttpError => new HttpError(410, 'gone', message);
/** 429: back off and retry. */
export const tooManyRequests = (message: string, retryAfterSeconds = 1): HttpError =>
  new HttpError(429, 'too_many_requests', message, 'user', { 'retry-after': String(retryAfterSeconds) });
/** 503: the server is stopping (or cannot take work now); the request may be retried, here or on the next server. */
export const serviceUnavailable = (message: string, retryAfterSeconds = 1): HttpError =>
  new HttpError(503, 'unavailable', message, 'server', { 'retry-after': String(retryAfterSeconds) });
