/**
 * @module A connection to one compute worker: send ops, await their replies by id.
 */
import net from 'node:net';
import { encodeFrame, FrameReader } from './frames.js';
import type { WorkerCalls, WorkerOp } from './ops.js';

/** An error reply from the worker. `category` is `user` when the request itself was bad. */
export class WorkerRequestError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly category: 'user' | 'server',
  ) {
    super(message);
    this.name = 'WorkerRequestError';
  }
}

/** The connection closed before a reply arrived. */
export class WorkerConnectionError extends Error {
  override name = 'WorkerConnectionError';
}

/** Where a worker listens: a unix socket path, or a TCP host and port. */
export type WorkerAddress = { socketPath: string } | { host: string; port: number };

interface Pending {
  resolve: (reply: Record<string, unknown>) => void;
  reject: (error: Error) => void;
}

/**
 * A multiplexed request/reply connection to a worker.
 *
 * @example
 * const worker = await WorkerClient.connect({ socketPath: '/tmp/w.sock' });
 * await worker.request('load_model', { model: 'lathe/tiny-qwen3' });
 */
export class WorkerClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closedError: Error | undefined;
  private readonly closeListeners: ((error: Error) => void)[] = [];

  private constructor(private readonly socket: net.Socket, reader = new FrameReader()) {
    socket.on('data', (chunk: Buffer) => {
      let messages: Record<string, unknown>[];
      try {
        messages = reader.push(chunk);
      } catch (error) {
        this.fail(new WorkerConnectionError(`bad frame from worker: ${(error as Error).message}`));
        socket.destroy();
        return;
      }
      for (const message of messages) this.dispatch(message);
    });
    socket.on('error', (error) => this.fail(new WorkerConnectionError(`worker connection error: ${error.message}`)));
    socket.on('close', () => this.fail(new WorkerConnectionError('worker connection closed')));
  }

  /** Connects to a listening worker. */
  static connect(address: WorkerAddress): Promise<WorkerClient> {
    return new Promise((resolve, reject) => {
      const socket = 'socketPath' in address ? net.connect(address.socketPath) : net.connect(address.port, address.host);
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(new WorkerClient(socket));
      });
      socket.once('error', reject);
    });
  }

  /**
   * Serves requests over a connection the worker opened to us (a remote worker, once registered).
   * `reader` carries whatever bytes the registration left unread.
   */
  static over(socket: net.Socket, reader?: FrameReader): WorkerClient {
    return new WorkerClient(socket, reader);
  }

  /** Calls `listener` once, when the connection is gone (at once if it already is). */
  onClose(listener: (error: Error) => void): void {
    if (this.closedError) listener(this.closedError);
    else this.closeListeners.push(listener);
  }

  /** Drops the connection at once (outstanding requests reject). */
  destroy(): void {
    this.socket.destroy();
  }

  /**
   * Sends one op; resolves with the reply's fields, rejects with a {@link WorkerRequestError}. An op
   * of {@link WorkerCalls} takes and returns its typed fields; any other op name (a tool's, a test's)
   * goes untyped.
   *
   * @example
   * const { results } = await worker.request('forward', { items: [forwardItem('run-1', op)] });
   */
  request<K extends WorkerOp>(op: K, fields: WorkerCalls[K]['fields']): Promise<WorkerCalls[K]['reply']>;
  request<K extends WorkerOp>(op: K & ('hello' | 'stats' | 'shutdown')): Promise<WorkerCalls[K]['reply']>;
  // `O` is inferred only when no type argument is given: a known op then cannot bypass its typed fields.
  request<T = Record<string, unknown>, O extends string = string>(op: O extends WorkerOp ? never : O, fields?: Record<string, unknown>): Promise<T>;
  request(op: string, fields: Record<string, unknown> = {}): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.write(encodeFrame({ ...fields, op, id }));
    });
  }

  /** Closes the connection; outstanding requests reject. */
  close(): void {
    this.socket.end();
  }

  private dispatch(message: Record<string, unknown>): void {
    const id = message['id'];
    const waiter = typeof id === 'number' ? this.pending.get(id) : undefined;
    if (waiter === undefined) {
      // A reply without a known id (e.g. a malformed-frame notice) concerns no pending request.
      return;
    }
    this.pending.delete(id as number);
    if (message['ok'] === true) {
      const { id: _id, ok: _ok, ...fields } = message;
      waiter.resolve(fields);
    } else {
      const error = (message['error'] ?? {}) as { code?: string; message?: string; category?: string };
      waiter.reject(
        new WorkerRequestError(error.code ?? 'unknown', error.message ?? 'worker error', error.category === 'user' ? 'user' : 'server'),
      );
    }
  }

  /** Whether the connection is gone (every further request fails with a WorkerConnectionError). */
  get closed(): boolean {
    return this.closedError !== undefined;
  }

  private fail(error: Error): void {
    const first = this.closedError === undefined;
    this.closedError ??= error;
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
    if (first) for (const listener of this.closeListeners.splice(0)) listener(error);
  }
}
