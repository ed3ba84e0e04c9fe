/**
 * @module Rebuilding a run's adapter in a worker that lost it (a crash, a restart): its last
 * snapshot, then every logged state-changing request since, sent again exactly as it first ran
 * ({@link toWorkerRequest}). Snapshots are taken every few optimizer steps and when a checkpoint is
 * loaded, and each one lets the log forget the batches before it.
 */
import { decode } from '@msgpack/msgpack';
import type { SnapshotFiles } from '../checkpoints/snapshots.js';
import type { Logger } from '../log.js';
import type { RequestRepo, RunRow } from '../store/index.js';
import type { WorkerClient } from '../worker/client.js';
import { changesAdapter, toWorkerRequest, type TrainingOp } from '../worker/ops.js';
import type { OutcomeRecorder } from './outcomes.js';

/** One rebuild of a run's adapter: from the snapshot after `fromSeq` (-1: none), replaying `replayed` logged requests. */
export interface Recovery {
  modelId: string;
  fromSeq: number;
  /** State-changing requests run again (forward_backward, optim_step, create, load). */
  replayed: number;
  /** Time the rebuild took (ms). */
  ms: number;
}

/** A finished request of a run, as recovery replays it (also the context its held outcome carries). */
export interface ReplayStep {
  seqId: number;
  op: TrainingOp;
}

/** How many {@link Recovery} records a server keeps. */
const RECOVERY_HISTORY = 100;

/**
 * Sends a run's state-changing steps to `client` again, in order (forward passes and saves change
 * nothing and are skipped); returns how many it sent. A step the worker now refuses stops the replay.
 *
 * @example
 * await replaySteps(client, 'S:train:0', [{ seqId: 0, op: createOp }, { seqId: 1, op: fbOp }]); // 2
 */
export async function replaySteps(client: WorkerClient, modelId: string, steps: readonly ReplayStep[]): Promise<number> {
  let replayed = 0;
  for (const { seqId, op } of steps) {
    if (!changesAdapter(op)) continue;
    const request = toWorkerRequest(modelId, op);
    if (request.op === 'forward_backward') {
      // A batched call reports per item: a refused item must stop the rebuild too.
      const { results } = await client.request(request.op, request.fields);
      if (!results[0]?.ok) throw new Error(`replaying seq ${seqId} failed: ${results[0]?.error?.message}`);
    } else {
      await client.request(request.op, request.fields);
    }
    replayed++;
  }
  return replayed;
}

/** Options for {@link RunRecovery}. */
export interface RunRecoveryOptions {
  requests: Pick<RequestRepo, 'completedSince' | 'dropPayloads'>;
  /** Where finished outcomes the store has not taken yet are held. */
  completion: Pick<OutcomeRecorder, 'heldFor'>;
  snapshots: SnapshotFiles;
  /** The worker of a base model (where a run's snapshot is taken). */
  worker: (baseModel: string) => Promise<WorkerClient>;
  /** Snapshot each run every this many optimizer steps: fewer means less to replay after a crash. */
  snapshotEvery: number;
  /** Where a snapshot that failed is logged. */
  logger: Logger;
}

/** A run as snapshots know it. */
type RunRef = Pick<RunRow, 'modelId' | 'baseModel'>;

/**
 * Snapshots runs and rebuilds them from their snapshot and log.
 *
 * @example
 * const recovery = new RunRecovery({ requests: store.requests, completion, snapshots: new SnapshotFiles(dataDir), worker: (m) => pool.client(m), snapshotEvery: 10, logger });
 * await recovery.optimStepped(run, seqId);      // snapshots every tenth step
 * await recovery.recover(run.modelId, client);  // after the worker died
 */
export class RunRecovery {
  /** The latest rebuilds, oldest first (at most {@link RECOVERY_HISTORY}). */
  readonly history: Recovery[] = [];

  private readonly optimSteps = new Map<string, number>();

  constructor(private readonly options: RunRecoveryOptions) {
    if (!Number.isSafeInteger(options.snapshotEvery) || options.snapshotEvery < 1) throw new Error(`snapshotEvery must be a positive integer, got ${options.snapshotEvery}`);
  }

  /** Counts an optimizer step of the run (request `seqId`), and snapshots the run when one is due. */
  async optimStepped(run: RunRef, seqId: number): Promise<void> {
    const steps = (this.optimSteps.get(run.modelId) ?? 0) + 1;
    this.optimSteps.set(run.modelId, steps);
    if (steps % this.options.snapshotEvery === 0) await this.snapshot(run, seqId);
  }

  /**
   * Saves the run's adapter and optimizer state as of `seqId`, replacing its previous snapshot. A
   * failure is logged, not thrown: the step stands, and recovery starts from the previous snapshot
   * (replaying more of the log).
   */
  async snapshot(run: RunRef, seqId: number): Promise<void> {
    const { modelId } = run;
    try {
      const client = await this.options.worker(run.baseModel);
      await this.options.snapshots.replace(modelId, seqId, (folder) => client.request('snapshot', { adapter: modelId, path: folder }));
      // Recovery starts from here now; the batches logged before it are never replayed again.
      await this.options.requests.dropPayloads(modelId, seqId);
    } catch (error) {
      this.options.logger.error({ err: error, modelId, seqId }, `snapshot of ${modelId} at seq ${seqId} failed`);
    }
  }

  /** Rebuilds a run's adapter in `client`: last snapshot, then every state-changing request since. */
  async recover(modelId: string, client: WorkerClient): Promise<void> {
    const started = Date.now();
    const snapshot = this.options.snapshots.latest(modelId);
    const fromSeq = snapshot?.seq ?? -1;
    if (snapshot) await client.request('load_adapter', { adapter: modelId, path: snapshot.path, include_optimizer: true });
    // The log holds a prefix of the run's finished requests; the rest is held in memory. Read the
    // memory first: an outcome written meanwhile is then in one of the two (or both, once).
    const held = this.options.completion.heldFor(modelId).flatMap((h) => (h.outcome.status === 'complete' ? [h.context as ReplayStep] : []));
    const rows = await this.options.requests.completedSince(modelId, fromSeq);
    const steps: ReplayStep[] = rows.map((row) => ({ seqId: row.seqId!, op: (decode(row.payload!) as { op: TrainingOp }).op }));
    const logged = new Set(steps.map((step) => step.seqId));
    steps.push(...held.filter((step) => step.seqId > fromSeq && !logged.has(step.seqId)));
    const replayed = await replaySteps(client, modelId, steps);
    this.history.push({ modelId, fromSeq, replayed, ms: Date.now() - started });
    if (this.history.length > RECOVERY_HISTORY) this.history.shift();
  }
}
