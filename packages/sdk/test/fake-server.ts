// A scripted stand-in for a Tinker server behind an injected `fetch`, for what a real server will
// not do on demand (resets, 429s, hangs, 5xx). Unscripted requests get sensible default answers.
import { decodeForwardBackwardRequest, encodeForwardBackwardOutput, encodeSampleResponse, type TensorData } from '@lathe/protocol';

/** One request as the fake server saw it. */
export interface Call {
  method: string;
  path: string;
  url: string;
  headers: Headers;
  /** Parsed JSON body, or the decoded protobuf ForwardBackwardRequest. */
  body: any;
  signal: AbortSignal | undefined;
  at: number;
}

/** A handler answers a call, or returns undefined to fall through to the defaults. */
export type Handler = (call: Call) => Response | Promise<Response> | undefined | Promise<Response | undefined>;

export const json = (body: unknown, status = 200, headers: Record<string, string> = {}): Response =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });

export const proto = (bytes: Uint8Array): Response => new Response(bytes, { status: 200, headers: { 'content-type': 'application/x-protobuf' } });

/** A fetch that never answers until its signal aborts. */
export function hang(signal: AbortSignal | undefined): Promise<Response> {
  return new Promise((_, reject) => signal?.addEventListener('abort', () => reject(signal.reason), { once: true }));
}

/** A connection reset, the way undici reports it. */
export function reset(): never {
  throw new TypeError('fetch failed', { cause: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }) });
}

export const f32 = (...v: number[]): TensorData => ({ dtype: 'float32', shape: [v.length], data: Float32Array.from(v) });

/**
 * The fake server: `handlers` run first (in order), then the defaults, which implement a tiny
 * Tinker: sessions, create_model, forward_backward (logprobs -1 per target, `loss:sum` = tokens),
 * optim_step, saves, sampling, and futures that resolve on the first poll.
 */
export class FakeServer {
  readonly calls: Call[] = [];
  handlers: Handler[] = [];
  clientConfig: Record<string, unknown> = {};
  private futures = new Map<string, () => Response>();
  private counter = 0;

  readonly fetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    const headers = new Headers(init?.headers);
    let body: any;
    if (init?.body instanceof Uint8Array) body = decodeForwardBackwardRequest(init.body);
    else if (typeof init?.body === 'string') body = JSON.parse(init.body);
    const call: Call = { method: init?.method ?? 'GET', path: url.pathname.replace(/^\/api\/v1\//, ''), url: url.href, headers, body, signal: init?.signal ?? undefined, at: Date.now() };
    this.calls.push(call);
    for (const handler of this.handlers) {
      const res = await handler(call);
      if (res) return res;
    }
    return this.defaults(call);
  };

  /** Calls to one path. */
  to(path: string): Call[] {
    return this.calls.filter((c) => c.path === path);
  }

  /** Registers a future and returns its submit answer. */
  future(result: () => Response, extra: Record<string, unknown> = {}): Response {
    const id = `req-${++this.counter}`;
    this.futures.set(id, result);
    return json({ request_id: id, ...extra });
  }

  private defaults(call: Call): Response {
    switch (call.path) {
      case 'client/config':
        return json(this.clientConfig);
      case 'create_session':
        return json({ type: 'create_session', session_id: 'S' });
      case 'session_heartbeat':
        return json({ type: 'session_heartbeat' });
      case 'sessions/S/finish':
        return json({});
      case 'create_model':
        return this.future(() => json({ model_id: 'S:train:0', type: 'create_model' }), { model_id: 'S:train:0' });
      case 'forward_backward': {
        const msg = call.body as ReturnType<typeof decodeForwardBackwardRequest>;
        const outputs = msg.data.map((d) => ({ logprobs: f32(...Array(d.modelInput.length).fill(-1)) }));
        const tokens = msg.data.reduce((n, d) => n + d.modelInput.length, 0);
        return this.future(() => proto(encodeForwardBackwardOutput({ lossFnOutputs: outputs, metrics: { 'loss:sum': tokens, 'tokens:mean': tokens / msg.data.length } })), { model_id: msg.modelId });
      }
      case 'optim_step':
        return this.future(() => json({ metrics: { 'step:sum': call.body.seq_id }, type: 'optim_step' }));
      case 'save_weights':
        return this.future(() => json({ path: `tinker://S:train:0/weights/${call.body.path}`, type: 'save_weights' }));
      case 'create_sampling_session':
        return json({ sampling_session_id: `S:sample:${call.body.sampling_session_seq_id}` });
      case 'asample': {
        const n = call.body.num_samples as number;
        return this.future(
          () =>
            proto(
              encodeSampleResponse({
                sequences: Array.from({ length: n }, (_, i) => ({ stopReason: 'length', tokens: [i, call.body.seq_id], logprobs: [-1, -2] })),
                promptLogprobs: null,
                topkPromptLogprobs: null,
                promptCacheHitTokens: 0,
              }),
            ),
          { sample_sequence_ids: Array.from({ length: n }, (_, i) => `seq-${i}`) },
        );
      }
      case 'retrieve_future': {
        const result = this.futures.get(call.body.request_id);
        return result ? result() : json({ error: { type: 'gone', message: 'unknown future', category: 'user' } }, 410);
      }
      default:
        return json({ error: { type: 'not_found', message: `no route ${call.method} ${call.path}`, category: 'user' } }, 404);
    }
  }
}
