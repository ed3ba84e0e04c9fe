/**
 * @module The sampling submit path: a sampling request is logged, queued in its base model's lane
 * (429 when the queue is full), resumed after a restart, or cancelled while still queued.
 */
import { decode, encode } from '@msgpack/msgpack';
import type { CsrIndex } from '@lathe/protocol';
import { tooManyRequests } from '../http/errors.js';
import { sampleResult, type StoredResult } from '../protocol/results.js';
import type { RequestRow, Store } from '../store/index.js';
import type { Lane, Reservation, SampleJob } from './lane.js';
import type { OutcomeRecorder } from './outcomes.js';
import type { SessionFutures } from './session-futures.js';

/** A sampling request as the request log holds it. */
export type LoggedSample = Omit<SampleJob, 'requestId' | 'finalize' | 'owner' | 'bytes'> & {
  baseModel: string;
  /** The CSR index of a sparse `target_prompt_logprobs` request: the result is sent in that layout. */
  targetCsr?: CsrIndex;
};

/** What {@link SamplingService} works with; the lanes stay the server's. */
export interface SamplingServiceOptions {
  store: Store;
  /** Recorded on every request this server accepts (see `ServicesOptions.serverId`). */
  serverId: string;
  sessionFutures: SessionFutures;
  completion: OutcomeRecorder;
  /** Throws (503) when the server cannot take new work for a base model now. */
  admit: (baseModel: string) => void;
  /** The lane of a base model. */
  lane: (baseModel: string) => Lane;
  /** Every lane, to find a queued request to cancel. */
  lanes: () => Iterable<Lane>;
}

/**
 * Logs, queues, resumes and cancels sampling requests.
 *
 * @example
 * const sampling = new SamplingService({ store, serverId, sessionFutures, completion, admit: () => undefined, lane: (m) => services.lane(m), lanes: () => lanes.values() });
 * const requestId = await sampling.submit(owner, samplerId, 0, job);
 */
export class SamplingService {
  constructor(private readonly options: SamplingServiceOptions) {}

  /**
   * Logs a sampling request and queues it; 429 when the base model's queue is full. The queue
   * place is reserved before the request is logged, so whatever is acknowledged is queued.
   */
  async submit(owner: string, samplerId: string, seqId: number | null, job: LoggedSample): Promise<string> {
    this.options.admit(job.baseModel);
    const lane = this.options.lane(job.baseModel);
    const payload = encode(job);
    const place = lane.reserveSample(owner, payload.byteLength);
    if (typeof place === 'string') throw tooManyRequests(place);
    let inserted: { row: RequestRow; created: boolean };
    try {
      inserted = await this.options.store.requests.insert({ owner, target: samplerId, seqId, kind: 'sample', payload, now: Date.now(), serverId: this.options.serverId });
    } catch (error) {
      lane.releaseSample(place);
      throw error;
    }
    if (inserted.created) this.enqueue(inserted.row.requestId, owner, samplerId, seqId, job, payload.byteLength, place);
    else lane.releaseSample(place);
    return inserted.row.requestId;
  }

  /** Queues again a sampling request acknowledged before a restart: queued whatever the limit. */
  resume(row: RequestRow): void {
    this.enqueue(row.requestId, row.owner, row.target, row.seqId, decode(row.payload!) as LoggedSample, row.payload!.byteLength);
  }

  /**
   * Cancels a sampling request that is still queued (`cancel_future`): it leaves its lane's queue
   * and its future fails with a user error. One already running, or finished, is left alone.
   * Returns whether it was cancelled.
   */
  async cancel(requestId: string): Promise<boolean> {
    for (const lane of this.options.lanes()) {
      if (!lane.cancelSample(requestId)) continue;
      await this.options.completion.fail(requestId, { message: 'the request was cancelled by the client (cancel_future) before it ran', category: 'user' });
      return true;
    }
    return false;
  }

  /** Queues a logged sampling request, into a place `reserved` by the caller or beyond the limits. */
  private enqueue(requestId: string, owner: string, samplerId: string, seqId: number | null, job: LoggedSample, bytes: number, reserved?: Reservation): void {
    this.options.sessionFutures.watch(requestId, samplerId, seqId);
    this.options.lane(job.baseModel).submitSample({
      requestId,
      owner,
      bytes,
      adapter: job.adapter,
      load: job.load,
      item: job.item,
      finalize: async (reply): Promise<StoredResult> => sampleResult(reply, job.targetCsr),
    }, reserved);
  }
}
