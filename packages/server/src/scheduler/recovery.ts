/**
 * @module Rebuilding a run's adapter in a worker that lost it (a crash, a restart): its last
 * snapshot, then every logged state-changing request since, sent again exactly as it first ran
 * ({@link toWorkerRequest}). Snapshots are taken every few optimizer steps and when a checkpoint is
 * loaded, and each one lets the log forget the batches before it.
 */
import { decode } from '@msgpack/msgpack';
import type { SnapshotFiles } from '../checkpoints/snapshots.js';
import type { RequestRepo } from '../store/index.js';
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
}

/**
 * Snapshots runs and rebuilds them from their snapshot and log.
 *
 * @example
 * const recovery = new RunRecovery({ requests: store.requests, completion, snapshots: new SnapshotFiles(dataDir) });
 * await recovery.snapshot(modelId, seqId, client); // every few optimizer steps
 * await recovery.recover(modelId, freshClient);    // after the worker died
 */
export class RunRecovery {
  /** The latest rebuilds, oldest first (at most {@link RECOVERY_HISTORY}). */
  readonly history: Recovery[] = [];

  constructor(private readonly options: RunRecoveryOptions) {}

  /** Saves the run's adapter and optimizer state as of `seqId`, replacing its previous snapshot. */
  async snapshot(modelId: string, seqId: number, client: WorkerClient): Promise<void> {
    await this.options.snapshots.replace(modelId, seqId, (folder) => client.request('snapshot', { adapter: modelId, path: folder }));
    // Recovery starts from here now; the batches logged before it are never replayed again.
    await this.options.requests.dropPayloads(modelId, seqId);
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
