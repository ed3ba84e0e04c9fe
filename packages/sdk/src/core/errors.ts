/**
 * @module The SDK's error hierarchy. Everything it throws is a {@link LatheError}:
 *
 * ```
 * LatheError (alias TinkerError)
 * ├─ APIError                      an HTTP answer other than 2xx; `status`, `body`, `headers`
 * │  ├─ BadRequestError            400
 * │  ├─ AuthenticationError        401
 * │  ├─ PermissionDeniedError      403
 * │  ├─ NotFoundError              404
 * │  ├─ ConflictError              409
 * │  ├─ FutureExpiredError         410 from retrieve_future: the result is gone
 * │  ├─ UnprocessableEntityError   422
 * │  ├─ RateLimitError             429
 * │  └─ InternalServerError        5xx
 * ├─ APIConnectionError            no HTTP answer (reset, refused, DNS); `cause`
 * │  └─ APITimeoutError            no answer in time
 * ├─ APIUserAbortError             the caller's AbortSignal fired
 * ├─ APIResponseValidationError    an answer the SDK cannot read
 * ├─ RequestFailedError            the server accepted the request, then it failed; `category`
 * └─ InvalidArgumentError          bad input to the SDK itself (a base URL, a token id, a tensor shape, a path)
 * ```
 */

/**
 * Base class of every error the SDK throws.
 *
 * @example
 * try { await training.optimStep({ learningRate: 1e-4 }); }
 * catch (e) { if (e instanceof LatheError) console.error(e.message); }
 */
export class LatheError extends Error {
  override name = 'LatheError';
}

/**
 * Who is to blame for a failed request, as the server reports it.
 *
 * @example
 * if (error instanceof RequestFailedError && error.category === 'user') fixMyData();
 */
export type RequestErrorCategory = 'user' | 'server' | 'unknown';

/** The parsed fields of a server error body (`{error: {type, message, category}}` or `{error, category}`). */
interface ErrorBodyFields {
  message: string | undefined;
  type: string | undefined;
  category: RequestErrorCategory | undefined;
}

function parseErrorBody(body: unknown): ErrorBodyFields {
  const out: ErrorBodyFields = { message: undefined, type: undefined, category: undefined };
  if (typeof body !== 'object' || body === null) return out;
  const record = body as Record<string, unknown>;
  const inner = record['error'];
  const source = typeof inner === 'object' && inner !== null ? (inner as Record<string, unknown>) : record;
  if (typeof inner === 'string') out.message = inner;
  else if (typeof source['message'] === 'string') out.message = source['message'];
  else if (typeof record['detail'] === 'string') out.message = record['detail'];
  if (typeof source['type'] === 'string') out.type = source['type'];
  const category = source['category'] ?? record['category'];
  if (category === 'user' || category === 'server' || category === 'unknown') out.category = category;
  return out;
}

/**
 * The server answered with a non-2xx status. `message` is the server's own message, verbatim,
 * when the body carries one; `status`, `headers` and the parsed `body` are kept.
 *
 * @example
 * try { await rest.getTrainingRun('nope'); }
 * catch (e) { if (e instanceof APIError) console.log(e.status, e.message, e.type); }
 */
export class APIError extends LatheError {
  override name = 'APIError';
  /** The HTTP status. */
  readonly status: number;
  /** The response headers. */
  readonly headers: Headers | undefined;
  /** The parsed response body (JSON when it was JSON, else text). */
  readonly body: unknown;
  /** The server's error type (e.g. `"unknown_model"`), when it sent one. */
  readonly type: string | undefined;
  /** The server's error category, when it sent one. */
  readonly category: RequestErrorCategory | undefined;
  /** The `x-request-id` response header, when present. */
  readonly requestId: string | undefined;

  /**
   * Normally built by the SDK from an HTTP answer (see {@link APIError.generate}).
   *
   * @example
   * new APIError(418, { error: { message: 'I am a teapot' } }).message; // 'I am a teapot'
   */
  constructor(status: number, body: unknown, headers?: Headers, message?: string) {
    const parsed = parseErrorBody(body);
    super(message ?? parsed.message ?? `Error code: ${status}${body === undefined || body === '' ? '' : ` - ${typeof body === 'string' ? body : JSON.stringify(body)}`}`);
    this.status = status;
    this.headers = headers;
    this.body = body;
    this.type = parsed.type;
    this.category = parsed.category;
    this.requestId = headers?.get('x-request-id') ?? undefined;
  }

  /**
   * Builds the subclass that matches `status`.
   *
   * @example
   * APIError.generate(404, { error: { message: 'no such run' } }) instanceof NotFoundError; // true
   */
  static generate(status: number, body: unknown, headers?: Headers): APIError {
    switch (status) {
      case 400:
        return new BadRequestError(status, body, headers);
      case 401:
        return new AuthenticationError(status, body, headers);
      case 403:
        return new PermissionDeniedError(status, body, headers);
      case 404:
        return new NotFoundError(status, body, headers);
      case 409:
        return new ConflictError(status, body, headers);
      case 422:
        return new UnprocessableEntityError(status, body, headers);
      case 429:
        return new RateLimitError(status, body, headers);
      default:
        return status >= 500 ? new InternalServerError(status, body, headers) : new APIError(status, body, headers);
    }
  }
}

/**
 * 400: the request was malformed or asked for something impossible (the message says what).
 *
 * @example
 * catch (e) { if (e instanceof BadRequestError) console.error('fix the request:', e.message); }
 */
export class BadRequestError extends APIError {
  override name = 'BadRequestError';
}
/**
 * 401: missing or invalid API key.
 *
 * @example
 * catch (e) { if (e instanceof AuthenticationError) console.error('check LATHE_API_KEY'); }
 */
export class AuthenticationError extends APIError {
  override name = 'AuthenticationError';
}
/**
 * 403: the key may not do this.
 *
 * @example
 * catch (e) { if (e instanceof PermissionDeniedError) console.error(e.message); }
 */
export class PermissionDeniedError extends APIError {
  override name = 'PermissionDeniedError';
}
/**
 * 404: unknown id (or one that belongs to another key).
 *
 * @example
 * catch (e) { if (e instanceof NotFoundError) return undefined; }
 */
export class NotFoundError extends APIError {
  override name = 'NotFoundError';
}
/**
 * 409: a conflicting state on the server.
 *
 * @example
 * catch (e) { if (e instanceof ConflictError) console.warn(e.message); }
 */
export class ConflictError extends APIError {
  override name = 'ConflictError';
}
/**
 * 422: the body was well-formed but semantically invalid.
 *
 * @example
 * catch (e) { if (e instanceof UnprocessableEntityError) console.error(e.message); }
 */
export class UnprocessableEntityError extends APIError {
  override name = 'UnprocessableEntityError';
}
/**
 * 429: too many requests; the SDK already retried (honouring `Retry-After`) before throwing this.
 *
 * @example
 * catch (e) { if (e instanceof RateLimitError) await sleep(5000); }
 */
export class RateLimitError extends APIError {
  override name = 'RateLimitError';
}
/**
 * 5xx: the server failed; the SDK already retried before throwing this.
 *
 * @example
 * catch (e) { if (e instanceof InternalServerError) console.error('server trouble:', e.message); }
 */
export class InternalServerError extends APIError {
  override name = 'InternalServerError';
}

/**
 * 410 from `retrieve_future`: the server no longer knows this future (it expired, or the server
 * lost it). Resubmit the work.
 *
 * @example
 * catch (e) { if (e instanceof FutureExpiredError) console.error('future', e.futureId, 'expired'); }
 */
export class FutureExpiredError extends APIError {
  override name = 'FutureExpiredError';
  /** The future's request id. */
  readonly futureId: string;

  constructor(futureId: string, body: unknown, headers?: Headers) {
    super(410, body, headers);
    this.futureId = futureId;
  }
}

/**
 * No HTTP answer arrived: connection refused or reset, DNS failure, TLS error. `cause` holds the
 * underlying error. The SDK retries these before throwing.
 *
 * @example
 * catch (e) { if (e instanceof APIConnectionError) console.error('is the server up?', e.cause); }
 */
export class APIConnectionError extends LatheError {
  override name = 'APIConnectionError';

  constructor(message = 'Connection error.', options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * A request (or a wait for a result) took longer than its timeout.
 *
 * @example
 * catch (e) { if (e instanceof APITimeoutError) console.error('timed out'); }
 */
export class APITimeoutError extends APIConnectionError {
  override name = 'APITimeoutError';

  constructor(message = 'Request timed out.', options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * The caller's `AbortSignal` fired. `cause` is the signal's reason.
 *
 * @example
 * const controller = new AbortController();
 * const done = training.forwardBackward(data, 'cross_entropy', undefined, { signal: controller.signal });
 * controller.abort();
 * await done.then(undefined, (e) => e instanceof APIUserAbortError); // true
 */
export class APIUserAbortError extends LatheError {
  override name = 'APIUserAbortError';

  constructor(message = 'Request was aborted.', options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * The server answered 2xx with something the SDK cannot read (wrong content type, bad protobuf,
 * missing fields).
 *
 * @example
 * catch (e) { if (e instanceof APIResponseValidationError) console.error(e.message); }
 */
export class APIResponseValidationError extends LatheError {
  override name = 'APIResponseValidationError';
}

/**
 * The server accepted the request, but running it failed (delivered through the future). The
 * message is the server's, verbatim; `category` says whose fault it was.
 *
 * @example
 * try { await training.forwardBackward(data, 'cross_entropy'); }
 * catch (e) { if (e instanceof RequestFailedError && e.category === 'user') console.error('bad input:', e.message); }
 */
export class RequestFailedError extends LatheError {
  override name = 'RequestFailedError';
  /** The failed future's request id. */
  readonly requestId: string;
  /** `'user'`: the request was wrong; `'server'`: the server failed; `'unknown'`: not said. */
  readonly category: RequestErrorCategory;

  constructor(message: string, requestId: string, category: RequestErrorCategory) {
    super(message);
    this.requestId = requestId;
    this.category = category;
  }
}

/**
 * The caller passed something the SDK cannot use: a base URL that is not an absolute `http:` or
 * `https:` URL, a token id that is not a non-negative integer, a tensor whose shape does not fit
 * its data, a malformed `tinker://` path, an empty batch. Thrown (or rejected) before any request
 * is sent; never retried.
 *
 * @example
 * try { ModelInput.fromInts([1.5]); }
 * catch (e) { if (e instanceof InvalidArgumentError) console.error('bad input:', e.message); }
 */
export class InvalidArgumentError extends LatheError {
  override name = 'InvalidArgumentError';
}

/**
 * The Tinker SDK's name for {@link LatheError} (the same class).
 *
 * @example
 * catch (e) { if (e instanceof TinkerError) console.error(e.message); }
 */
export const TinkerError = LatheError;
/**
 * The Tinker SDK's name for {@link LatheError} (type position).
 *
 * @example
 * function report(e: TinkerError): void { console.error(e.message); }
 */
export type TinkerError = LatheError;
