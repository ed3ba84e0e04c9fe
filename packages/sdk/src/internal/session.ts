/**
 * @module The session behind a `ServiceClient` (the Python SDK's `InternalClientHolder`): created
 * lazily on the first training or sampling call (`client/config`, then `create_session`), kept alive
 * by a heartbeat every 10 s, finished by `close()`. It hands out the per-session counters
 * (`model_seq_id`, `sampling_session_seq_id`).
 */
import { APIError, APIUserAbortError, LatheError } from '../core/errors.js';
import { raceAbort } from './abort.js';
import * as api from './api.js';
import type { Transport } from './transport.js';

/** The server's client config (tinker-protocol.md §4.1.1), the fields this SDK uses. */
export interface ServerClientConfig {
  fwdbwdMaxChunkLen: number;
  fwdbwdMaxChunkBytes: number;
  createModelViaLoadWeights: boolean;
}

/** Session settings. */
export interface SessionOptions {
  sdkVersion: string;
  tags: readonly string[];
  userMetadata: Readonly<Record<string, string>>;
  projectId: string | undefined;
  heartbeatIntervalMs: number;
}

/** Why a session was finished (Tinker 0.38's `ClientSessionFinishReason`). */
export type SessionFinishReason = 'success' | 'errored' | 'interrupted';

/** A started session. */
export interface SessionInfo {
  sessionId: string;
  config: ServerClientConfig;
}

/** `promise`, or an {@link APIUserAbortError} as soon as `signal` fires. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  return signal ? raceAbort(promise, signal, (reason) => new APIUserAbortError(undefined, { cause: reason })) : promise;
}

function readConfig(body: Record<string, unknown>): ServerClientConfig {
  const int = (key: string, fallback: number): number => (typeof body[key] === 'number' && (body[key] as number) > 0 ? (body[key] as number) : fallback);
  return {
    fwdbwdMaxChunkLen: int('fwdbwd_max_chunk_len', 1024),
    fwdbwdMaxChunkBytes: int('fwdbwd_max_chunk_bytes_count', 5_000_000),
    createModelViaLoadWeights: body['create_model_via_load_weights'] === true,
  };
}

/**
 * One session per `ServiceClient`.
 *
 * @example
 * const session = new Session(transport, options);
 * const { sessionId } = await session.ensure();
 * await session.close();
 */
export class Session {
  private starting: Promise<SessionInfo> | undefined;
  private info: SessionInfo | undefined;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private closed = false;
  private modelSeq = 0;
  private samplerSeq = 0;

  constructor(
    private readonly transport: Transport,
    private readonly options: SessionOptions,
  ) {}

  /**
   * The session, creating it on first use (a failed start is retried by the next call). `signal`
   * stops this caller's wait, not the start that other callers share.
   */
  ensure(signal?: AbortSignal): Promise<SessionInfo> {
    if (this.closed) return Promise.reject(new LatheError('this ServiceClient is closed'));
    if (!this.starting) {
      this.starting = this.start().catch((error: unknown) => {
        this.starting = undefined;
        throw error;
      });
    }
    return signal ? abortable(this.starting, signal) : this.starting;
  }

  private async start(): Promise<SessionInfo> {
    const config = readConfig(await api.clientConfig(this.transport, this.options.sdkVersion));
    const sessionId = await api.createSession(this.transport, {
      tags: [...this.options.tags],
      userMetadata: { ...this.options.userMetadata },
      sdkVersion: this.options.sdkVersion,
      projectId: this.options.projectId,
    });
    const info = { sessionId, config };
    if (this.closed) {
      await this.finish(info.sessionId, 'interrupted', undefined);
      throw new LatheError('this ServiceClient is closed');
    }
    this.info = info;
    this.startHeartbeat(info.sessionId);
    return info;
  }

  private startHeartbeat(sessionId: string): void {
    if (this.options.heartbeatIntervalMs <= 0) return;
    const beat = async (): Promise<void> => {
      try {
        await api.sessionHeartbeat(this.transport, sessionId);
      } catch (error) {
        // 410: the session is finished, so stop beating. Other failures are transient.
        if (error instanceof APIError && error.status === 410) this.stopHeartbeat();
        this.transport.config.logger?.warn(`session ${sessionId}: heartbeat failed: ${(error as Error).message}`, { sessionId });
      }
    };
    this.heartbeat = setInterval(() => void beat(), this.options.heartbeatIntervalMs);
    // In Node, a pending heartbeat must not keep the process alive.
    (this.heartbeat as { unref?: () => void }).unref?.();
  }

  private stopHeartbeat(): void {
    if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  /** The session id, once started. */
  get sessionId(): string | undefined {
    return this.info?.sessionId;
  }

  /** The next `model_seq_id` (one per training client). */
  nextModelSeqId(): number {
    return this.modelSeq++;
  }

  /** The next `sampling_session_seq_id` (shared by sampling sessions and unnamed sampler saves). */
  nextSamplingSessionSeqId(): number {
    return this.samplerSeq++;
  }

  private async finish(sessionId: string, reason: SessionFinishReason, detail: string | undefined): Promise<void> {
    try {
      await api.finishSession(this.transport, sessionId, reason, detail);
    } catch (error) {
      // Servers without the route (404) or with the session already gone (410) are fine.
      if (!(error instanceof APIError && (error.status === 404 || error.status === 410))) throw error;
    }
  }

  /** Stops the heartbeat and finishes the session on the server (if one was started) with `reason`. */
  async close(reason: SessionFinishReason = 'success', detail?: string): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopHeartbeat();
    const info = this.info ?? (await this.starting?.catch(() => undefined));
    if (info) await this.finish(info.sessionId, reason, detail);
  }
}
