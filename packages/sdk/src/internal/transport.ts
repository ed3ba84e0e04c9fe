/**
 * @module HTTP over `fetch`: base URL and auth headers, per-attempt timeouts, the caller's
 * `AbortSignal`, and retries with exponential backoff and jitter on connection errors, timeouts,
 * 408, 429 (honouring `Retry-After`) and 5xx. Nothing else is retried. The idempotency key of a
 * request is reused across its retries, and so is its body (hence its `seq_id`).
 */
import { APIConnectionError, APIError, APIResponseValidationError, APITimeoutError, APIUserAbortError, InvalidArgumentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { raceAbort } from './abort.js';

/** Resolved transport settings. */
export interface TransportConfig {
  /** Ends with `/`; API paths are joined onto it. */
  baseUrl: string;
  apiKey: string;
  fetch: typeof fetch;
  timeoutMs: number;
  maxRetries: number;
  initialRetryDelayMs: number;
  maxRetryDelayMs: number;
  defaultHeaders: Record<string, string>;
  /** How retries and polls wait (default {@link sleep}); tests inject one that records the delays. */
  sleep?: ((ms: number, signal?: AbortSignal) => Promise<void>) | undefined;
  /** Told of each exchange (debug) and each retry (warn); default silent. */
  logger?: Logger | undefined;
}

/** One logical request (retried as a whole). */
export interface HttpRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** Relative to the base URL, e.g. `api/v1/create_model`. */
  path: string;
  query?: Record<string, string | number | undefined> | undefined;
  /** A JSON body. */
  json?: unknown;
  /** A binary body (with `contentType`). */
  bytes?: Uint8Array | undefined;
  contentType?: string | undefined;
  accept?: string | undefined;
  headers?: Record<string, string> | undefined;
  timeoutMs?: number | undefined;
  maxRetries?: number | undefined;
  signal?: AbortSignal | undefined;
  /** `manual` leaves 3xx answers to the caller (archive URLs). */
  redirect?: 'follow' | 'manual' | undefined;
  /** Non-2xx statuses for which this returns true are handed back instead of thrown (and not retried). */
  passStatus?: ((status: number) => boolean) | undefined;
}

/** A fully read answer. */
export interface HttpResponse {
  status: number;
  headers: Headers;
  body: Uint8Array;
  contentType: string;
}

const textDecoder = new TextDecoder();

/** The default logger: drops everything. */
const SILENT_LOGGER: Logger = { debug: () => undefined, warn: () => undefined };

/** The body as text. */
export function responseText(res: HttpResponse): string {
  return textDecoder.decode(res.body);
}

/** The body as JSON; a non-JSON body is an {@link APIResponseValidationError}. */
export function responseJson<T>(res: HttpResponse): T {
  const text = responseText(res);
  if (text === '') return {} as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new APIResponseValidationError(`expected a JSON body (status ${res.status}, content-type ${res.contentType || 'none'}): ${text.slice(0, 200)}`);
  }
}

/** The body of an error answer: JSON when it parses, else text (kept verbatim, so it can be reported). */
export function errorBody(res: HttpResponse): unknown {
  const text = responseText(res);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/** A random id (crypto when available). */
export function uuid4(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return 'xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx'.replace(/[xy]/g, (ch) => {
    const r = (Math.random() * 16) | 0;
    return (ch === 'x' ? r : (r & 0x3) | 0x8).toString(16);
  });
}

/** Sleeps `ms`, rejecting with {@link APIUserAbortError} if `signal` fires first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new APIUserAbortError(undefined, { cause: signal.reason }));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new APIUserAbortError(undefined, { cause: signal?.reason }));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Backoff for retry `attempt` (0-based): `initial · 2^attempt`, capped, minus up to 25 % jitter. */
export function backoffMs(attempt: number, initialMs: number, maxMs: number): number {
  return Math.min(initialMs * 2 ** attempt, maxMs) * (1 - 0.25 * Math.random());
}

/** `retry-after-ms` or `retry-after` (seconds or an HTTP date), when within (0, 60 s]. */
export function retryAfterMs(headers: Headers, now = Date.now()): number | undefined {
  let ms: number | undefined;
  const precise = headers.get('retry-after-ms');
  if (precise !== null && precise.trim() !== '' && Number.isFinite(Number(precise))) ms = Number(precise);
  const header = headers.get('retry-after');
  if (ms === undefined && header !== null && header.trim() !== '') {
    const seconds = Number(header);
    if (Number.isFinite(seconds)) ms = seconds * 1000;
    else {
      const date = Date.parse(header);
      if (Number.isFinite(date)) ms = date - now;
    }
  }
  return ms !== undefined && ms > 0 && ms <= 60_000 ? ms : undefined;
}

/** Whether an HTTP answer is worth retrying: `x-should-retry` decides if present, else 408/429/5xx. */
export function isRetryableStatus(status: number, headers: Headers): boolean {
  const should = headers.get('x-should-retry');
  if (should === 'true') return true;
  if (should === 'false') return false;
  return status === 408 || status === 429 || status >= 500;
}


/**
 * Sends requests to one server.
 *
 * @example
 * const t = new Transport(config);
 * const res = await t.send({ method: 'POST', path: 'api/v1/create_session', json: { tags: [] } });
 */
export class Transport {
  constructor(readonly config: TransportConfig) {}

  /** Waits `ms` with the configured sleep, rejecting with {@link APIUserAbortError} if `signal` fires. */
  wait(ms: number, signal?: AbortSignal): Promise<void> {
    return (this.config.sleep ?? sleep)(ms, signal);
  }

  /**
   * The absolute URL of `path` with `query`.
   *
   * @throws {InvalidArgumentError} when no URL can be built from the base URL and `path`.
   */
  url(path: string, query?: HttpRequest['query']): string {
    let url: URL;
    try {
      url = new URL(path.replace(/^\/+/, ''), this.config.baseUrl);
    } catch (error) {
      throw new InvalidArgumentError(`cannot build a request URL from base URL ${JSON.stringify(this.config.baseUrl)} and path ${JSON.stringify(path)}`, { cause: error });
    }
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  /**
   * Sends `req`, retrying what is retryable, and returns the fully read 2xx (or passed-through) answer.
   *
   * @throws {APIError} subclass for a final non-2xx answer; {@link APIConnectionError} /
   *   {@link APITimeoutError} when no answer came; {@link APIUserAbortError} when `req.signal` fired.
   */
  async send(req: HttpRequest): Promise<HttpResponse> {
    const maxRetries = req.maxRetries ?? this.config.maxRetries;
    const idempotencyKey = req.method === 'GET' ? undefined : `lathe-ts-retry-${uuid4()}`;
    const logger = this.config.logger ?? SILENT_LOGGER;
    const retry = (attempt: number, waitMs: number, reason: string): Promise<void> => {
      logger.warn(`${req.method} ${req.path}: ${reason}; retry ${attempt + 1} of ${maxRetries} in ${Math.round(waitMs)} ms`, { method: req.method, path: req.path, attempt, waitMs });
      return this.wait(waitMs, req.signal);
    };
    for (let attempt = 0; ; attempt++) {
      let res: HttpResponse;
      const started = Date.now();
      try {
        res = await this.attempt(req, attempt, idempotencyKey);
      } catch (error) {
        if (error instanceof APIConnectionError && attempt < maxRetries) {
          await retry(attempt, backoffMs(attempt, this.config.initialRetryDelayMs, this.config.maxRetryDelayMs), error.message);
          continue;
        }
        throw error;
      }
      logger.debug(`${req.method} ${req.path} -> ${res.status}`, { method: req.method, path: req.path, status: res.status, attempt, ms: Date.now() - started });
      if ((res.status >= 200 && res.status < 300) || req.passStatus?.(res.status) === true) return res;
      if (req.redirect === 'manual' && res.status >= 300 && res.status < 400) return res;
      if (attempt < maxRetries && isRetryableStatus(res.status, res.headers)) {
        await retry(attempt, retryAfterMs(res.headers) ?? backoffMs(attempt, this.config.initialRetryDelayMs, this.config.maxRetryDelayMs), `status ${res.status}`);
        continue;
      }
      throw APIError.generate(res.status, errorBody(res), res.headers);
    }
  }

  /** One HTTP exchange, body included, under the per-attempt timeout. */
  private async attempt(req: HttpRequest, retryCount: number, idempotencyKey: string | undefined): Promise<HttpResponse> {
    if (req.signal?.aborted) throw new APIUserAbortError(undefined, { cause: req.signal.reason });
    // Built outside the try below: a URL that cannot be built is the caller's error, not a
    // connection error to retry.
    const url = this.url(req.path, req.query);
    const headers: Record<string, string> = {
      accept: req.accept ?? 'application/json',
      'x-api-key': this.config.apiKey,
      ...this.config.defaultHeaders,
      ...req.headers,
    };
    if (retryCount > 0) headers['x-stainless-retry-count'] = String(retryCount);
    if (idempotencyKey) headers['x-idempotency-key'] = idempotencyKey;
    let body: RequestInit['body'];
    if (req.bytes !== undefined) {
      body = req.bytes as unknown as RequestInit['body'];
      headers['content-type'] = req.contentType ?? 'application/octet-stream';
    } else if (req.json !== undefined) {
      body = JSON.stringify(req.json);
      headers['content-type'] = 'application/json';
    }

    const controller = new AbortController();
    const timeoutMs = req.timeoutMs ?? this.config.timeoutMs;
    let timedOut = false;
    const onUserAbort = (): void => controller.abort(req.signal?.reason);
    req.signal?.addEventListener('abort', onUserAbort, { once: true });
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new APITimeoutError(`Request timed out after ${timeoutMs} ms.`));
    }, timeoutMs);
    try {
      const init: RequestInit = { method: req.method, headers, signal: controller.signal };
      if (body !== undefined) init.body = body;
      if (req.redirect) init.redirect = req.redirect;
      const response = await raceAbort(this.config.fetch(url, init), controller.signal, (reason) => reason as Error);
      const bytes = new Uint8Array(await raceAbort(response.arrayBuffer(), controller.signal, (reason) => reason as Error));
      return { status: response.status, headers: response.headers, body: bytes, contentType: response.headers.get('content-type') ?? '' };
    } catch (error) {
      if (timedOut) throw new APITimeoutError(`Request timed out after ${timeoutMs} ms.`, { cause: error });
      if (req.signal?.aborted) throw new APIUserAbortError(undefined, { cause: req.signal.reason });
      if (error instanceof APIUserAbortError || error instanceof APIError) throw error;
      const reason = error instanceof Error ? error.message : String(error);
      throw new APIConnectionError(`Connection error: ${reason}`, { cause: error });
    } finally {
      clearTimeout(timer);
      req.signal?.removeEventListener('abort', onUserAbort);
    }
  }
}
