/**
 * @module Polling a future with `POST /api/v1/retrieve_future` (tinker-protocol.md §3): 408 and
 * `try_again` mean "not yet" (poll again; the server holds each poll up to ~30 s), `complete_metadata`
 * asks for a second poll with the payload, `{error, category}` is a failed request, 410 an expired
 * future. Training and sampling results come back as protobuf (JSON is accepted too).
 */
import { APIConnectionError, APIError, APIResponseValidationError, FutureExpiredError, RequestFailedError, type RequestErrorCategory } from '../core/errors.js';
import type { ForwardBackwardOutput, SampleResponse } from '../core/types.js';
import { decodeForwardBackwardOutput, decodeSampleResponse, ProtoDecodeError } from '@lathe/protocol';
import { retrieveFuturePoll } from './api.js';
import { backoffMs, errorBody, responseJson, retryAfterMs, type Transport } from './transport.js';
import { forwardBackwardOutputFromJson, forwardBackwardOutputFromProto, sampleResponseFromJson, sampleResponseFromProto } from './wire.js';

/** What a future's result is. */
export type ResultKind = 'json' | 'fwdbwd' | 'sample';

/** The result type of each kind. */
export type ResultOf<K extends ResultKind> = K extends 'fwdbwd' ? ForwardBackwardOutput : K extends 'sample' ? SampleResponse : unknown;

/** Options of one poll loop. */
export interface PollOptions<K extends ResultKind> {
  kind: K;
  /** `X-Tinker-Request-Type`, e.g. `ForwardBackward`. */
  requestType: string;
  /** HTTP timeout of each poll; must exceed the server's hold time. */
  pollTimeoutMs: number;
  signal?: AbortSignal | undefined;
}

/** A poll answered faster than this did not hold; the next one waits a little (see below). */
const HELD_MS = 1000;
/** Consecutive 400s tolerated (a load balancer may send a stray one), as the Python SDK does. */
const MAX_BAD_REQUESTS = 3;
/** The backoff exponent stops growing here (the delay is capped by `maxRetryDelayMs` long before). */
const MAX_BACKOFF_EXPONENT = 16;

const PROTO = 'application/x-protobuf';

function category(value: unknown): RequestErrorCategory {
  return value === 'user' || value === 'server' ? value : 'unknown';
}

/**
 * Polls `requestId` until it resolves and returns the decoded result.
 *
 * @throws {RequestFailedError} when the request failed on the server; {@link FutureExpiredError} on 410;
 *   an {@link APIError} for other fatal answers; {@link APIConnectionError} after repeated connection failures.
 */
export async function retrieveFuture<K extends ResultKind>(transport: Transport, requestId: string, options: PollOptions<K>): Promise<ResultOf<K>> {
  const { initialRetryDelayMs, maxRetryDelayMs, maxRetries } = transport.config;
  const binary = options.kind !== 'json';
  let allowMetadataOnly = true;
  // Separate budgets, each reset by an answer that is not an error: connection failures and 5xx
  // share `maxRetries`; 400s have their own small budget; 429s are retried without limit (the
  // server is only asking us to slow down) but with their own growing, capped backoff.
  let failures = 0;
  let badRequests = 0;
  let rateLimited = 0;
  let quickTryAgains = 0;
  const started = Date.now();
  for (let iteration = 0; ; iteration++) {
    const headers: Record<string, string> = {
      'x-tinker-request-iteration': String(iteration),
      'x-tinker-request-type': options.requestType,
    };
    if (iteration === 0) headers['x-tinker-create-promise-roundtrip-time'] = String((Date.now() - started) / 1000);
    const sentAt = Date.now();
    let res;
    try {
      res = await retrieveFuturePoll(transport, {
        requestId,
        allowMetadataOnly,
        accept: binary ? `${PROTO}, application/json` : 'application/json',
        headers,
        timeoutMs: options.pollTimeoutMs,
        signal: options.signal,
      });
    } catch (error) {
      if (error instanceof APIConnectionError && failures < maxRetries) {
        await transport.wait(backoffMs(failures++, initialRetryDelayMs, maxRetryDelayMs), options.signal);
        continue;
      }
      throw error;
    }

    const tryAgain = async (): Promise<void> => {
      // A server that answers "not yet" without holding the poll would make us spin: back off a little.
      if (Date.now() - sentAt < HELD_MS) await transport.wait(Math.min(10 * 1.5 ** quickTryAgains++, 250), options.signal);
      else quickTryAgains = 0;
    };

    if (res.status === 408) {
      failures = badRequests = rateLimited = 0;
      await tryAgain();
      continue;
    }
    if (res.status === 410) throw new FutureExpiredError(requestId, errorBody(res), res.headers);
    if (res.status === 429) {
      const attempt = Math.min(rateLimited++, MAX_BACKOFF_EXPONENT);
      await transport.wait(retryAfterMs(res.headers) ?? backoffMs(attempt, initialRetryDelayMs, maxRetryDelayMs), options.signal);
      continue;
    }
    if (res.status === 400) {
      if (badRequests >= MAX_BAD_REQUESTS) throw APIError.generate(res.status, errorBody(res), res.headers);
      await transport.wait(retryAfterMs(res.headers) ?? backoffMs(badRequests++, initialRetryDelayMs, maxRetryDelayMs), options.signal);
      continue;
    }
    if (res.status >= 500) {
      if (failures >= maxRetries) throw APIError.generate(res.status, errorBody(res), res.headers);
      await transport.wait(retryAfterMs(res.headers) ?? backoffMs(failures++, initialRetryDelayMs, maxRetryDelayMs), options.signal);
      continue;
    }
    failures = badRequests = rateLimited = 0;

    if (res.contentType.includes(PROTO)) {
      if (!binary) throw new APIResponseValidationError(`retrieve_future ${requestId}: unexpected protobuf result for a ${options.requestType} request`);
      try {
        const result = options.kind === 'fwdbwd' ? forwardBackwardOutputFromProto(decodeForwardBackwardOutput(res.body)) : sampleResponseFromProto(decodeSampleResponse(res.body));
        return result as ResultOf<K>;
      } catch (error) {
        if (error instanceof ProtoDecodeError) throw new APIResponseValidationError(`retrieve_future ${requestId}: ${error.message}`, { cause: error });
        throw error;
      }
    }
    const body = responseJson<Record<string, unknown>>(res);
    if (body['type'] === 'try_again') {
      await tryAgain();
      continue;
    }
    if (body['status'] === 'complete_metadata' && allowMetadataOnly) {
      allowMetadataOnly = false;
      continue;
    }
    if ('error' in body) {
      const error = body['error'];
      const message = typeof error === 'string' ? error : typeof error === 'object' && error !== null && typeof (error as { message?: unknown }).message === 'string' ? (error as { message: string }).message : JSON.stringify(error);
      const cat = body['category'] ?? (typeof error === 'object' && error !== null ? (error as { category?: unknown }).category : undefined);
      throw new RequestFailedError(message, requestId, category(cat));
    }
    if (options.kind === 'fwdbwd') return forwardBackwardOutputFromJson(body) as ResultOf<K>;
    if (options.kind === 'sample') return sampleResponseFromJson(body) as ResultOf<K>;
    return body as ResultOf<K>;
  }
}

