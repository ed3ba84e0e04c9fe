/**
 * @module The result of a finished training request: the worker's reply plus what the request
 * logged beside its op ({@link JobMeta}), with the store updated on the way (run state, checkpoint
 * rows, sampling sessions) and the run snapshotted when due.
 */
import { folderBytes } from '../checkpoints/snapshots.js';
import type { StoredResult } from '../protocol/results.js';
import type { RunRow, Store } from '../store/index.js';
import type { WireTensor } from '../worker/tensor.js';
import { recordWithRetry } from './outcomes.js';
import type { RunRecovery } from './recovery.js';

/** What a training request's result needs beyond the worker's reply (logged with the op). */
export type JobMeta =
  | { kind: 'create_model' | 'forward' | 'forward_backward' | 'optim_step' | 'unload_model' }
  | { kind: 'load_weights'; path: string }
  | {
      kind: 'save';
      checkpointType: 'training' | 'sampler' | 'external';
      checkpointId: string;
      tinkerPath: string;
      storagePath: string;
      ttlSeconds: number | null;
      ephemeral: boolean;
      /** For unnamed sampler saves: the sampling session to create on the weights. */
      sampler: { samplerId: string; sessionId: string; baseModel: string } | null;
      userMetadata?: Record<string, string> | null;
    };

/** The future result `type` of each kind of save. */
const SAVE_RESULT_TYPE = { training: 'save_weights', sampler: 'save_weights_for_sampler', external: 'save_weights_external' } as const;

/** What {@link trainingResult} needs of the server. */
export interface ResultContext {
  store: Store;
  /** Counts optimizer steps and takes the runs' snapshots. */
  recovery: Pick<RunRecovery, 'optimStepped' | 'snapshot'>;
  /** The sampler checkpoint behind `adapter` was replaced: the next use reloads it. */
  forgetSampler(baseModel: string, adapter: string): void;
}

/**
 * Turns a worker reply into the future's result, recording checkpoints and snapshots on the way.
 *
 * @example
 * finalize: (reply) => trainingResult(ctx, owner, run, seqId, { kind: 'optim_step' }, reply)
 */
export async function trainingResult(ctx: ResultContext, owner: string, run: RunRow, seqId: number, meta: JobMeta, reply: Record<string, unknown>): Promise<StoredResult> {
  const json = (value: unknown): StoredResult => ({ kind: 'json', value });
  switch (meta.kind) {
    case 'create_model':
      await recordWithRetry(() => ctx.store.runs.setState(run.modelId, 'ready'));
      return json({ model_id: run.modelId, type: 'create_model' });
    case 'forward':
    case 'forward_backward':
      return { kind: 'fwdbwd', loss_fn_outputs: reply['loss_fn_outputs'] as Record<string, WireTensor>[], metrics: reply['metrics'] as Record<string, number> };
    case 'optim_step': {
      await ctx.recovery.optimStepped(run, seqId);
      return json({ metrics: (reply['metrics'] as Record<string, number>) ?? {}, type: 'optim_step' });
    }
    case 'unload_model':
      await recordWithRetry(() => ctx.store.runs.setState(run.modelId, 'unloaded'));
      return json({ model_id: run.modelId, type: 'unload_model' });
    case 'load_weights':
      // The run's own snapshot now holds the loaded weights: recovery never reads the checkpoint,
      // which its owner may delete or let expire. (If this fails, recovery replays the load.)
      await ctx.recovery.snapshot(run, seqId);
      return json({ path: meta.path, model_id: run.modelId, type: 'load_weights' });
    case 'save': {
      const now = Date.now();
      // The worker counts the bytes of what it saved; a PEFT export is measured here.
      const sizeBytes = reply['bytes'] !== undefined ? Number(reply['bytes']) : folderBytes(meta.storagePath);
      await recordWithRetry(() => ctx.store.checkpoints.put({
        modelId: run.modelId,
        checkpointId: meta.checkpointId,
        owner,
        checkpointType: meta.checkpointType,
        tinkerPath: meta.tinkerPath,
        storagePath: meta.storagePath,
        sizeBytes,
        expiresAt: meta.ttlSeconds ? now + meta.ttlSeconds * 1000 : null,
        ephemeral: meta.ephemeral,
        userMetadata: meta.userMetadata ?? null,
        now,
      }));
      ctx.forgetSampler(run.baseModel, samplerAdapter(meta.tinkerPath));
      const sampler = meta.sampler;
      if (sampler) {
        await recordWithRetry(() => ctx.store.samplers.create({ ...sampler, owner, modelPath: meta.tinkerPath, now }));
        return json({ sampling_session_id: sampler.samplerId, type: 'save_weights_for_sampler' });
      }
      if (meta.checkpointType === 'external') return json({ path: meta.tinkerPath, size_bytes: sizeBytes, type: SAVE_RESULT_TYPE.external });
      return json({ path: meta.tinkerPath, type: SAVE_RESULT_TYPE[meta.checkpointType] });
    }
  }
}

/** The worker adapter slot that serves a sampler checkpoint. */
export function samplerAdapter(tinkerPath: string): string {
  return `sampler:${tinkerPath}`;
}
