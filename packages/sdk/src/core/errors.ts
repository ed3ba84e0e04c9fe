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
  /** The message of a subclass's error thrown without one (read through `new.target`). */
  protected static readonly defaultMessage: string | undefined = undefined;

  constructor(message?: string, options?: ErrorOptions) {
    super(message ?? new.target.defaultMessage, options);
  }
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
    const ErrorClass = STATUS_ERRORS.get(status) ?? (status >= 500 ? InternalServerError : APIError);
    return new ErrorClass(status, body, headers);
  }
}

/**
 * Defines an {@link APIError} subclass that only renames it, so `instanceof` tells the statuses
 * apart; the class's own `name` is set too, as a `class` declaration would.
 *
 * @example
 * const TeapotError = statusErrorClass('TeapotError');
 * new TeapotError(418, undefined).name; // 'TeapotError'
 */
function statusErrorClass(name: string): typeof APIError {
  const ErrorClass = class extends APIError {
    override name = name;
  };
  Object.defineProperty(ErrorClass, 'name', { value: name });
  return ErrorClass;
}

/**
 * The {@link APIError} subclass for each status the SDK tells apart ({@link APIError.generate}
 * picks from these):
 *
 * | class | status | meaning |
 * | --- | --- | --- |
 * | `BadRequestError` | 400 | the request was malformed or asked for something impossible (the message says what) |
 * | `AuthenticationError` | 401 | missing or invalid API key |
 * | `PermissionDeniedError` | 403 | the key may not do this |
 * | `NotFoundError` | 404 | unknown id (or one that belongs to another key) |
 * | `ConflictError` | 409 | a conflicting state on the server |
 * | `UnprocessableEntityError` | 422 | the body was well-formed but semantically invalid |
 * | `RateLimitError` | 429 | too many requests; the SDK already retried (honouring `Retry-After`) |
 * | `InternalServerError` | 5xx | the server failed; the SDK already retried |
 *
 * @example
 * catch (e) { if (e instanceof NotFoundError) return undefined; }
 */
export const [
  BadRequestError,
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  UnprocessableEntityError,
  RateLimitError,
  InternalServerError,
] = [
  'BadRequestError',
  'AuthenticationError',
  'PermissionDeniedError',
  'NotFoundError',
  'ConflictError',
  'UnprocessableEntityError',
  'RateLimitError',
  'InternalServerError',
].map(statusErrorClass) as [typeof APIError, typeof APIError, typeof APIError, typeof APIError, typeof APIError, typeof APIError, typeof APIError, typeof APIError];
// The instance types, for type positions (`catch (e) { const err: NotFoundError = ... }`).
export type BadRequestError = APIError;
export type AuthenticationError = APIError;
export type PermissionDeniedError = APIError;
export type NotFoundError = APIError;
export type ConflictError = APIError;
export type UnprocessableEntityError = APIError;
export type RateLimitError = APIError;
export type InternalServerError = APIError;

const STATUS_ERRORS: ReadonlyMap<number, typeof APIError> = new Map([
  [400, BadRequestError],
  [401, AuthenticationError],
  [403, PermissionDeniedError],
  [404, NotFoundError],
  [409, ConflictError],
  [422, UnprocessableEntityError],
  [429, RateLimitError],
]);

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
  protected static override readonly defaultMessage: string = 'Connection error.';
}

/**
 * A request (or a wait for a result) took longer than its timeout.
 *
 * @example
 * catch (e) { if (e instanceof APITimeoutError) console.error('timed out'); }
 */
export class APITimeoutError extends APIConnectionError {
  override name = 'APITimeoutError';
  protected static override readonly defaultMessage: string = 'Request timed out.';
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
  protected static override readonly defaultMessage: string = 'Request was aborted.';
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
