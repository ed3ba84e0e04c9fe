/**
 * @module The server's moving parts wired together: store, lanes (one per base model), worker
 * pool, futures. Routes call these; nothing here knows about HTTP bodies.
 *
 * Durability: every request is logged with its operation before it is acknowledged. Adapters are
 * snapshotted (with optimizer state) every few optimizer steps; when a worker dies, or after a
 * server restart, a run is rebuilt from its last snapshot plus the logged requests since, and
 * requests that were accepted but not finished run again. A run's snapshot is also taken when a
 * checkpoint is loaded into it, so recovery never reads a checkpoint its owner may since have
 * deleted or let expire.
 *
 * Ordering: a training request refused at submit once its run and `seq_id` are known (bad
 * tokens, shapes, loss function, unknown checkpoint…) is logged as failed in that `seq_id`'s
 * place, because the SDK has used the `seq_id` up: the run goes past it, and a retry gets the
 * same refusal. Requests waiting for a missing `seq_id` are bounded and time out (see `Lane`).
 */
import { decode, encode } from '@msgpack/msgpack';
import { SnapshotFiles } from './checkpoints/snapshots.js';
import { badRequest, HttpError, serviceUnavailable, tooManyRequests } from './http/errors.js';
import { defaultLogger, type Logger } from './log.js';
import { FutureHub } from './scheduler/futures.js';
import { Lane, type JobError, type Reservation, type SchedulingOptions } from './scheduler/lane.js';
import { OutcomeRecorder } from './scheduler/outcomes.js';
import { trainingResult, type JobMeta, type ResultContext } from './scheduler/training-results.js';
import { RunRecovery, type Recovery, type ReplayStep } from './scheduler/recovery.js';
import { SamplingService, type LoggedSample } from './scheduler/sampling-service.js';
import { SessionFutures } from './scheduler/session-futures.js';
import type { RequestRow, RunRow, Store } from './store/index.js';
import type { ModelCatalogue, ModelEntry } from './worker/catalogue.js';
import type { TrainingOp } from './worker/ops.js';
import type { WorkerPool } from './worker/pool.js';

/** Take a snapshot of a run's adapter and optimizer state every this many optimizer steps (default). */
export const SNAPSHOT_EVERY = 10;

interface LoggedTraining {
  op: TrainingOp;
  meta: JobMeta;
}

/** What {@link Services} is built from. */
export interface ServicesOptions {
  store: Store;
  pool: WorkerPool;
  catalogue: ModelCatalogue;
  /** Holds the runs' snapshots (and checkpoints). */
  dataDir: string;
  /** Sampling requests queued per base model before submits get 429. */
  maxQueuedSamples?: number;
  ordering?: SchedulingOptions;
  /** Rewrites error messages before clients see them (hides server paths). */
  redact?: (message: string) => string;
  /** Snapshot each run every this many optimizer steps (default {@link SNAPSHOT_EVERY}): fewer means less to replay after a crash. */
  snapshotEvery?: number;
  /**
   * This server's identity in a database several servers share (see {@link Services.checkLocal}): the
   * runs it creates and the requests it accepts carry it, and only it resumes them after a restart.
   */
  serverId?: string;
  /** Where errors the server survives are logged; default stderr. */
  logger?: Logger;
}

/**
 * Everything a route needs.
 *
 * @example
 * const services = new Services({ store, pool, catalogue, dataDir: '.lathe', logger: app.log });
 * await services.resumeInterruptedRequests();
 */
export class Services {
  readonly hub = new FutureHub();
  /** Sampling completions per session clone, for `retrieve_futures`. */
  readonly sessionFutures = new SessionFutures();
  private readonly lanes = new Map<string, Lane>();
  /** What finished training requests record their results with. */
  private readonly results: ResultContext;
  private stopping = false;
  /** Where the lanes record outcomes; holds them in memory while the store cannot write. */
  readonly completion: OutcomeRecorder;
  /** Snapshots runs and rebuilds them after a worker crash or a restart. */
  private readonly recovery: RunRecovery;
  /** Logs, queues and cancels sampling requests. */
  private readonly sampling: SamplingService;

  readonly store: Store;
  readonly pool: WorkerPool;
  readonly catalogue: ModelCatalogue;
  readonly dataDir: string;
  /** See {@link ServicesOptions.serverId}. */
  readonly serverId: string;
  private readonly maxQueuedSamples: number | undefined;
  private readonly ordering: SchedulingOptions;
  private readonly log: Logger;

  constructor(options: ServicesOptions) {
    const { store, pool, dataDir } = options;
    this.store = store;
    this.pool = pool;
    this.catalogue = options.catalogue;
    this.dataDir = dataDir;
    this.serverId = options.serverId ?? 'local';
    this.maxQueuedSamples = options.maxQueuedSamples;
    this.ordering = options.ordering ?? {};
    this.log = options.logger ?? defaultLogger();
    this.completion = new OutcomeRecorder({
      requests: store.requests,
      notify: (requestId, status) => {
        this.hub.notify(requestId);
        this.sessionFutures.settled(requestId, status);
      },
      logError: (message, error) => this.log.error({ err: error }, message),
      ...(options.redact ? { redact: options.redact } : {}),
    });
    // The listener looks the method up at each crash (tests wrap it).
    pool.onCrash((baseModel) => this.workerCrashed(baseModel));
    this.recovery = new RunRecovery({
      requests: store.requests,
      completion: this.completion,
      snapshots: new SnapshotFiles(dataDir),
      worker: (baseModel) => this.pool.client(baseModel),
      snapshotEvery: options.snapshotEvery ?? SNAPSHOT_EVERY,
      logger: this.log,
    });
    this.results = { store, recovery: this.recovery, forgetSampler: (baseModel, adapter) => this.lane(baseModel).forgetAdapter(adapter) };
    this.sampling = new SamplingService({
      store,
      serverId: this.serverId,
      sessionFutures: this.sessionFutures,
      completion: this.completion,
      admit: (baseModel) => {
        this.checkAccepting();
        this.checkServable(baseModel);
      },
      lane: (baseModel) => this.lane(baseModel),
      lanes: () => this.lanes.values(),
    });
  }

  /** The latest rebuilds of runs after a worker crash or a restart, oldest first. */
  get recoveries(): readonly Recovery[] {
    return this.recovery.history;
  }

  /**
   * `row` as its future should answer: with the outcome held in memory if the request finished
   * but the store could not record it yet.
   */
  settled(row: RequestRow): RequestRow {
    const held = row.status === 'pending' || row.status === 'running' ? this.completion.held(row.requestId) : undefined;
    if (!held) return row;
    return held.status === 'complete'
      ? { ...row, status: 'complete', result: held.result, error: null }
      : { ...row, status: 'failed', result: null, error: held.error };
  }

  /** Every model this server serves (as of the catalogue's last scan). */
  get models(): readonly ModelEntry[] {
    return this.catalogue.entries;
  }

  /** {@link model}, after looking for a model added since the last scan (or named by folder path). */
  async knownModel(baseModel: string): Promise<ModelEntry> {
    await this.catalogue.lookup(baseModel);
    return this.model(baseModel);
  }

  /** The catalogue entry of a base model, or a 400 naming what this server serves. */
  model(baseModel: string): ModelEntry {
    const entry = this.catalogue.find(baseModel);
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
        recover: (modelId, client) => this.recovery.recover(modelId, client),
        recordLost: (owner, modelId, seqIds, error) => this.recordLost(owner, modelId, seqIds, error),
        logger: this.log,
        ...this.ordering,
        ...(this.maxQueuedSamples !== undefined ? { maxQueuedSamples: this.maxQueuedSamples } : {}),
      });
      this.lanes.set(baseModel, lane);
    }
    return lane;
  }

  /**
   * Refuses (409 `run_on_other_server`) a run that another server sharing the database holds: that
   * server's worker has its adapter and its data dir the run's snapshots and checkpoint files, so
   * training (or loading its checkpoints) here would fork the run or read files that are not here.
   *
   * @example
   * services.checkLocal(run); // before anything is logged for the run
   */
  checkLocal(run: RunRow): void {
    if (run.serverId === null || run.serverId === this.serverId) return;
    throw new HttpError(409, 'run_on_other_server', `training run ${run.modelId} lives on server ${run.serverId} (this is server ${this.serverId}); send its requests, and loads of its checkpoints, to that server`);
  }

  /** Called by the pool when a worker process dies: its runs are rebuilt on next use. */
  workerCrashed(baseModel: string): void {
    this.lanes.get(baseModel)?.workerLost();
  }

  // ---- training -------------------------------------------------------------------------------

  /**
   * Logs a training request and queues it in seq order. A repeated `(model_id, seq_id)` returns
   * the original request id without running anything twice (or, if that one was refused, the
   * same refusal). 429 when the request would wait for a missing earlier seq beyond the limits.
   */
  async submitTraining(owner: string, run: RunRow, seqId: number, op: TrainingOp, meta: JobMeta): Promise<string> {
    this.checkAccepting();
    this.checkLocal(run);
    const now = Date.now();
    const logged: LoggedTraining = { op, meta };
    if (run.state === 'unloaded') {
      // A retry of a request logged before the unload still gets its future; nothing new runs.
      const earlier = await this.store.requests.findBySeq(run.modelId, seqId, owner);
      if (earlier) return original(earlier);
      throw badRequest(`training run ${run.modelId} was unloaded; create a new model (or load a checkpoint into one) to continue`, 'model_unloaded');
    }
    this.checkServable(run.baseModel);
    const lane = await this.trainingLane(run, seqId);
    const expected = lane.expectedSeq(run.modelId) ?? 0;
    if (seqId < expected) {
      return this.refuseTraining(owner, run, seqId, meta.kind, badRequest(`seq_id ${seqId} of ${run.modelId} is behind the next expected seq_id ${expected}`, 'stale_seq_id'));
    }
    const payload = encode(logged);
    const place = lane.reserve(owner, run.modelId, seqId, payload.byteLength);
    if (typeof place === 'string') throw tooManyRequests(place);
    let inserted: { row: RequestRow; created: boolean };
    try {
      inserted = await this.store.requests.insert({ owner, target: run.modelId, seqId, kind: meta.kind, payload, now, serverId: this.serverId });
    } catch (error) {
      lane.release(place);
      throw error;
    }
    const { row, created } = inserted;
    if (!created) {
      lane.release(place);
      return original(row);
    }
    this.enqueueTraining(row.requestId, owner, run, seqId, logged, payload.byteLength, place);
    await this.store.runs.touch(run.modelId, now);
    return row.requestId;
  }

  /**
   * Logs a training request refused at submit (`error`, a 4xx) as failed in its `seq_id`'s place,
   * so the run goes past it instead of waiting for it for ever: the SDK has used that `seq_id`
   * up. Throws the refusal; a retry of it gets the same one again. When `(run, seqId)` was logged
   * before as an accepted request, this is a retry of that one: its request id is returned.
   *
   * @example
   * // in a route, once the run and seq_id are known:
   * try { data = prepareData(lossFn, datums, model) } catch (e) { if (e instanceof HttpError) return services.refuseTraining(who, run, seqId, 'forward_backward', e); throw e }
   */
  async refuseTraining(owner: string, run: RunRow, seqId: number, kind: string, error: HttpError): Promise<string> {
    if (run.state === 'unloaded' || error.statusCode === 429) throw error; // nothing goes on after an unload; a 429 is sent again
    this.checkLocal(run);
    const lane = await this.trainingLane(run, seqId);
    if (!lane.inWindow(run.modelId, seqId)) throw error; // far beyond what the run waits for: no place to take
    const { row, created } = await this.store.requests.insert({
      owner,
      target: run.modelId,
      seqId,
      kind,
      payload: null,
      now: Date.now(),
      serverId: this.serverId,
      error: { message: error.message, category: error.category, refused: { status: error.statusCode, type: error.type } },
    });
    if (created) {
      lane.pass(run.modelId, seqId);
      throw error;
    }
    return original(row);
  }

  /** Logs the seq ids a run gave up waiting for as refused, so one that arrives late is told so. */
  private async recordLost(owner: string, modelId: string, seqIds: number[], error: JobError): Promise<void> {
    for (const seqId of seqIds) {
      await this.store.requests.insert({ owner, target: modelId, seqId, kind: 'missing', payload: null, now: Date.now(), serverId: this.serverId, error: { ...error, refused: { status: 400, type: 'seq_id_timeout' } } });
    }
  }

  /**
   * The lane of a run, which tracks the run from now on. A run this process has not seen (the
   * server restarted) is rebuilt from its log on first use and goes on where its log says.
   */
  private async trainingLane(run: RunRow, seqId: number): Promise<Lane> {
    const lane = this.lane(run.baseModel);
    if (lane.expectedSeq(run.modelId) === undefined) {
      const progress = await this.store.requests.progress(run.modelId);
      lane.registerRun(run.modelId, progress?.nextSeq ?? seqId, true, progress?.finishedAfter);
    }
    return lane;
  }

  private enqueueTraining(requestId: string, owner: string, run: RunRow, seqId: number, logged: LoggedTraining, bytes: number, place?: Reservation): void {
    // A run's outcomes reach the log in seq order, even while some are held in memory.
    this.completion.track(requestId, run.modelId, { seqId, op: logged.op } satisfies ReplayStep);
    this.lane(run.baseModel).submitTraining(
      { requestId, owner, modelId: run.modelId, seqId, op: logged.op, bytes, finalize: (reply) => trainingResult(this.results, owner, run, seqId, logged.meta, reply) },
      place,
    );
  }

  // ---- sampling -------------------------------------------------------------------------------

  /** Logs a sampling request and queues it (see {@link SamplingService.submit}). */
  submitSample(owner: string, samplerId: string, seqId: number | null, job: LoggedSample): Promise<string> {
    return this.sampling.submit(owner, samplerId, seqId, job);
  }

  /** Cancels a sampling request that is still queued (see {@link SamplingService.cancel}). */
  cancelSample(requestId: string): Promise<boolean> {
    return this.sampling.cancel(requestId);
  }

  // ---- stop and restart -----------------------------------------------------------------------

  /** Refuses new work once {@link stop} has begun: 503, which clients retry (against the next server). */
  private checkAccepting(): void {
    if (this.stopping) throw serviceUnavailable('the server is shutting down; retry in a moment');
  }

  /** 503 when no worker can serve `baseModel` now (no local workers, no remote one announced it). */
  private checkServable(baseModel: string): void {
    const why = this.pool.unavailable(baseModel);
    if (why) throw serviceUnavailable(why, 5);
  }

  /**
   * Graceful stop: new submits get 503, the worker calls in flight finish and their outcomes are
   * recorded, and requests still queued stay unfinished in the request log, where the next server
   * on the same store resumes them ({@link resumeInterruptedRequests}). Held long polls answer now.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.lanes.values()].map((lane) => lane.stop()));
    const unrecorded = await this.completion.flush();
    this.completion.close();
    if (unrecorded > 0) this.log.error(`${unrecorded} finished requests could not be recorded; they run again when the server restarts`);
    this.hub.close();
    this.sessionFutures.close();
  }

  /** Queues again every request the previous server process accepted but did not finish. */
  async resumeInterruptedRequests(): Promise<number> {
    const unfinished = await this.store.requests.unfinished(this.serverId);
    const lost: JobError = { message: 'the server restarted before this request ran and it could not be resumed; submit it again', category: 'server' };
    // A run resumes where its log says (at its lowest unfinished seq if none finished).
    const firstSeq = new Map<string, number>();
    for (const row of unfinished) {
      if (row.kind !== 'sample' && row.seqId !== null) firstSeq.set(row.target, Math.min(firstSeq.get(row.target) ?? row.seqId, row.seqId));
    }
    let resumed = 0;
    for (const row of unfinished) {
      try {
        if (row.kind === 'sample') {
          this.sampling.resume(row);
        } else {
          const run = await this.store.runs.get(row.target, row.owner);
          if (!run || row.seqId === null || !row.payload) throw new Error('not resumable');
          // Acknowledged before the restart: queued whatever the limits.
          await this.trainingLane(run, firstSeq.get(run.modelId) ?? row.seqId);
          this.enqueueTraining(row.requestId, row.owner, run, row.seqId, decode(row.payload) as LoggedTraining, row.payload.byteLength);
        }
        resumed++;
      } catch {
        await this.store.requests.fail(row.requestId, lost, Date.now());
      }
    }
    return resumed;
  }

  /** Queue depths per base model (for stats). */
  queues(): Record<string, { training: number; sampling: number }> {
    return Object.fromEntries([...this.lanes].map(([model, lane]) => [model, lane.queued]));
  }
}

/** What a retry of a logged training request gets: its future, or the refusal it got at submit. */
function original(row: RequestRow): string {
  const refused = row.error?.refused;
  if (row.status === 'failed' && row.error && refused) throw new HttpError(refused.status, refused.type, row.error.message, row.error.category === 'server' ? 'server' : 'user');
  return row.requestId;
}

export type { RequestRow };
// Routes name these by the services that run them.
export { samplerAdapter, type JobMeta } from './scheduler/training-results.js';
