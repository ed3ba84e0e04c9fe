/**
 * @module The TCP port remote workers dial (`lathe serve --worker-port N`). The worker connects to
 * the server (so a machine behind NAT can join); its first frame is `register` with the worker
 * token, the devices it computes on and the models it can load. A wrong token is answered with an
 * `unauthorized` error and the connection is closed; after a good one the server sends ops over the
 * same connection, in the same frame format as to a local worker.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import { WorkerClient } from './client.js';
import { encodeFrame, FrameReader } from './frames.js';
import type { ModelEntry } from './catalogue.js';

/** A device a worker computes on, as it announced it. */
export interface WorkerDevice {
  type: string;
  name: string;
  memory_bytes: number;
}

/** A remote worker that registered with a good token. */
export interface RemoteRegistration {
  id: string;
  client: WorkerClient;
  /** `host:port` the connection came from. */
  address: string;
  hostname: string;
  pid: number | undefined;
  devices: WorkerDevice[];
  /** The models it can load. */
  models: ModelEntry[];
  /** The model its engine already holds (a worker that reconnected), if any. */
  loaded: string | null;
}

/** Options for {@link WorkerListener.listen}. */
export interface WorkerListenerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** What a worker must send in `register`. */
  token: string;
  /** Called for each worker that registered. */
  onWorker: (worker: RemoteRegistration) => void;
  /** One line per refused or failed registration. */
  log?: (line: string) => void;
}

/** How long a new connection has to send its `register` frame. */
const REGISTER_TIMEOUT_MS = 30_000;
/** Most bytes buffered from a connection not yet authenticated (a register frame is far smaller). */
const MAX_REGISTER_BYTES = 16 << 20;

/** A fresh random worker token (printed by `lathe serve` when none is given). */
export function generateWorkerToken(): string {
  return randomBytes(24).toString('base64url');
}

/** Constant-time token comparison (on digests, so that lengths leak nothing either). */
function sameToken(given: unknown, expected: string): boolean {
  if (typeof given !== 'string') return false;
  const digest = (value: string): Buffer => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/**
 * @example
 * const listener = await WorkerListener.listen({ host: '0.0.0.0', port: 7001, token, onWorker: (w) => pool.attach(w) });
 * // python -m lathe_worker --connect server:7001   (LATHE_WORKER_TOKEN=token)
 * await listener.close();
 */
export class WorkerListener {
  private nextId = 1;
  private readonly pending = new Set<net.Socket>();

  private constructor(
    private readonly server: net.Server,
    private readonly options: WorkerListenerOptions,
  ) {}

  /** Starts listening; resolves once the port is open. */
  static async listen(options: WorkerListenerOptions): Promise<WorkerListener> {
    const server = net.createServer();
    const listener = new WorkerListener(server, options);
    server.on('connection', (socket) => listener.handshake(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return listener;
  }

  /** The port workers dial. */
  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /**
   * Stops accepting workers and drops connections still registering; resolves once the registered
   * workers' connections are closed too (the pool closes them).
   */
  close(): Promise<void> {
    for (const socket of this.pending) socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private handshake(socket: net.Socket): void {
    const address = `${socket.remoteAddress}:${socket.remotePort}`;
    const log = (line: string): void => this.options.log?.(`worker ${address}: ${line}`);
    const reader = new FrameReader();
    this.pending.add(socket);
    socket.setNoDelay(true);
    // A worker whose machine vanishes without closing the connection is noticed by keepalive probes.
    socket.setKeepAlive(true, 10_000);
    socket.setTimeout(REGISTER_TIMEOUT_MS, () => {
      log('sent no register frame in time; closing');
      socket.destroy();
    });
    const done = (): void => {
      this.pending.delete(socket);
      socket.setTimeout(0);
      socket.off('data', onData);
      socket.off('error', onError);
    };
    const refuse = (id: unknown, code: string, message: string): void => {
      done();
      log(`refused: ${message}`);
      socket.end(encodeFrame({ id: typeof id === 'number' ? id : null, ok: false, error: { code, message, category: 'user' } }));
    };
    const onError = (): void => {
      done();
      socket.destroy();
    };
    let received = 0;
    const onData = (chunk: Buffer): void => {
      received += chunk.byteLength;
      if (received > MAX_REGISTER_BYTES) {
        refuse(null, 'frame_too_large', `the register frame exceeds ${MAX_REGISTER_BYTES} bytes`);
        return;
      }
      let first: Record<string, unknown> | undefined;
      try {
        first = reader.push(chunk)[0];
      } catch (error) {
        refuse(null, 'malformed_frame', `bad frame: ${(error as Error).message}`);
        return;
      }
      if (first === undefined) return; // the frame is still arriving
      if (first['op'] !== 'register') {
        refuse(first['id'], 'unauthorized', 'the first frame must be register (with the worker token)');
        return;
      }
      if (!sameToken(first['token'], this.options.token)) {
        refuse(first['id'], 'unauthorized', 'wrong worker token: use the token this server printed at start (lathe serve --worker-token / LATHE_WORKER_TOKEN)');
        return;
      }
      done();
      const id = `remote-${this.nextId++}`;
      socket.write(encodeFrame({ id: first['id'] ?? 0, ok: true, worker_id: id }));
      this.options.onWorker({
        id,
        client: WorkerClient.over(socket, reader),
        address,
        hostname: typeof first['hostname'] === 'string' ? first['hostname'] : '',
        pid: typeof first['pid'] === 'number' ? first['pid'] : undefined,
        devices: Array.isArray(first['devices']) ? (first['devices'] as WorkerDevice[]) : [],
        models: Array.isArray(first['models']) ? (first['models'] as unknown[]).filter(isModelEntry) : [],
        loaded: typeof first['loaded'] === 'string' ? first['loaded'] : null,
      });
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.once('close', done);
  }
}

/** A well-formed model entry (what a worker announces is checked before the catalogue takes it). */
function isModelEntry(value: unknown): value is ModelEntry {
  const m = value as Partial<ModelEntry> | null;
  return typeof m === 'object' && m !== null && typeof m.model_name === 'string' && typeof m.architecture === 'string'
    && Number.isInteger(m.max_context_length) && Number.isInteger(m.vocab_size);
}
