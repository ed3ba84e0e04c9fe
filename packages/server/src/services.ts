/**
 * @module The server's moving parts wired together: store, lanes (one per base model), worker
 * pool, futures. Routes call these; nothing here knows about HTTP bodies.
 */
import { encode } from '@msgpack/msgpack';
import { badRequest, HttpError } from './http/errors.js';
import { packResult, type StoredResult } from './protocol/results.js';
import { FutureHub } from './scheduler/futures.js';
import { Lane, type Completion, type JobError, type SampleJob, type TrainingJob, type TrainingOp } from './scheduler/lane.js';
import type { RunRow, Store } from './store/index.js';
import type { ModelEntry } from './worker/catalogue.js';
import type { WorkerPool } from './worker/pool.js';

/** Why a run has no adapter in memory after the server restarted. */
export const LOST_ON_RESTART =
  'this training run was loaded in a server process that has since stopped, so its in-memory weights are gone; load a saved checkpoint (load_state) to continue';

/** Everything a route needs. */
export class Services {
  readonly hub = new FutureHub();
  private readonly lanes = new Map<string, Lane>();
  readonly completion: Completion;

  constructor(
    readonly store: Store,
    readonly pool: WorkerPool,
    readonly models: ModelEntry[],
    readonly dataDir: string,
    private readonly maxQueuedSamples?: number,
  ) {
    this.completion = {
      complete: async (requestId, result) => {
        await this.store.requests.complete(requestId, packResult(result as StoredResult), Date.now());
        this.hub.notify(requestId);
      },
      fail: async (requestId, error) => {
        await this.store.requests.fail(requestId, error, Date.now());
        this.hub.notify(requestId);
      },
    };
  }

  /** The catalogue entry of a base model, or a 400 naming what this server serves. */
  model(baseModel: string): ModelEntry {
    const entry = this.models.find((m) => m.model_name === baseModel);
    if (!entry) {
      throw badRequest(
        `unknown base model ${JSON.stringify(baseModel)}; this server serves: ${this.models.map((m) => m.model_name).join(', ')}`,
        'unknown_model',
      );
    }
    return entry;
  }

  /** The lane of a base model (created on first use). */
  lane(baseModel: string): Lane {
    let lane = this.lanes.get(baseModel);
    if (!lane) {
      lane = new Lane({
        baseModel,
        worker: () => this.pool.client(baseModel),
        completion: this.completion,
        ...(this.maxQueuedSamples !== undefined ? { maxQueuedSamples: this.maxQueuedSamples } : {}),
      });
      this.lanes.set(baseModel, lane);
    }
    return lane;
  }

  /** Called by the pool when a worker process dies. */
  workerCrashed(baseModel: string, code: number | null): void {
    this.lanes.get(baseModel)?.workerLost(`the worker serving ${baseModel} stopped (exit code ${code}); in-memory adapter state was lost, load a checkpoint to continue`);
  }

  /**
   * Logs a training request and queues it in seq order. A repeated `(model_id, seq_id)` returns
   * the original request id without running anything twice.
   */
  async submitTraining(
    owner: string,
    run: RunRow,
    seqId: number,
    kind: string,
    op: TrainingOp,
    finalize: TrainingJob['finalize'],
  ): Promise<string> {
    const now = Date.now();
    const lane = this.lane(run.baseModel);
    const { row, created } = await this.store.requests.insert({ owner, target: run.modelId, seqId, kind, payload: encode(op), now });
    if (!created) return row.requestId;
    if (!lane.hasRun(run.modelId)) {
      // The server restarted since this run was created: continue its seq numbering, but its
      // weights are gone until a checkpoint is loaded.
      lane.registerRun(run.modelId, seqId);
      lane.markLost(run.modelId, LOST_ON_RESTART);
    }
    const expected = lane.expectedSeq(run.modelId) ?? 0;
    if (seqId < expected) {
      const message = `seq_id ${seqId} of ${run.modelId} is behind the next expected seq_id ${expected}`;
      await this.completion.fail(row.requestId, { message, category: 'user' });
      throw badRequest(message, 'stale_seq_id');
    }
    await this.store.runs.touch(run.modelId, now);
    lane.submitTraining({ requestId: row.requestId, modelId: run.modelId, seqId, op, finalize });
    return row.requestId;
  }

  /** Logs a sampling request and queues it; 429 when the base model's queue is full. */
  async submitSample(owner: string, baseModel: string, samplerId: string, seqId: number | null, job: Omit<SampleJob, 'requestId'>): Promise<string> {
    const lane = this.lane(baseModel);
    if (lane.queued.sampling >= lane.maxQueuedSamples) {
      throw new HttpError(429, 'too_many_requests', `sampling queue for ${baseModel} is full; retry shortly`, 'user', { 'retry-after': '1' });
    }
    const { row, created } = await this.store.requests.insert({ owner, target: samplerId, seqId, kind: 'sample', payload: null, now: Date.now() });
    if (!created) return row.requestId;
    lane.submitSample({ ...job, requestId: row.requestId });
    return row.requestId;
  }

  /** Fails every request that was pending when the previous server process stopped. */
  async failInterruptedRequests(): Promise<number> {
    const unfinished = await this.store.requests.unfinished();
    const error: JobError = { message: 'the server restarted before this request ran; submit it again', category: 'server' };
    for (const row of unfinished) await this.store.requests.fail(row.requestId, error, Date.now());
    return unfinished.length;
  }

  /** Queue depths per base model (for stats). */
  queues(): Record<string, { training: number; sampling: number }> {
    return Object.fromEntries([...this.lanes].map(([model, lane]) => [model, lane.queued]));
  }
}
