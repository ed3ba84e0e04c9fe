/**
 * @module Checkpoint bookkeeping (the cookbook's `checkpoint_utils`): save a run's state and/or
 * sampler weights and record each save as one line of `{logPath}/checkpoints.jsonl`, from which a
 * run resumes.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { APIFuture, SaveWeightsResponse, ServiceClient, TrainingClient } from '@lathe/sdk';
import { appendJsonl, readJsonl } from './ml-log.js';

/** What to save: optimizer+weights state (to resume), sampler weights (to sample), or both. */
export type CheckpointKind = 'state' | 'sampler' | 'both';

/** A line of `checkpoints.jsonl`. Extra loop-state keys round-trip. */
export interface CheckpointRecord {
  name: string;
  /** The loop position to resume at: the next batch of `epoch`. */
  epoch: number;
  batch: number;
  /** Steps done when the checkpoint was taken (= the step a resumed run starts at). */
  step: number;
  final: boolean;
  state_path?: string;
  sampler_path?: string;
  [key: string]: unknown;
}

/** The loop state stored with a checkpoint. */
export type LoopState = Pick<CheckpointRecord, 'epoch' | 'batch' | 'step'> & Record<string, unknown>;

/** The file a run's checkpoints are listed in. */
export function checkpointsFile(logPath: string): string {
  return path.join(logPath, 'checkpoints.jsonl');
}

/** Every record of `{logPath}/checkpoints.jsonl`, oldest first (empty if none). */
export function readCheckpoints(logPath: string): CheckpointRecord[] {
  return readJsonl<CheckpointRecord>(checkpointsFile(logPath));
}

/**
 * The last checkpoint that has `requiredKey` (default: a resumable `state_path`), if any.
 *
 * @example
 * const last = getLastCheckpoint('runs/sft'); // { name: '000020', step: 20, state_path: 'tinker://…', … }
 */
export function getLastCheckpoint(logPath: string, requiredKey: 'state_path' | 'sampler_path' = 'state_path'): CheckpointRecord | undefined {
  return readCheckpoints(logPath).findLast((record) => typeof record[requiredKey] === 'string');
}

/** Options of {@link submitCheckpoint}. */
export interface CheckpointOptions {
  kind: CheckpointKind;
  /** Delete the checkpoint after this long (default: keep). */
  ttlSeconds?: number;
  final?: boolean;
}

/**
 * Submits the saves now, in the training client's order (so they capture every step submitted
 * before them), and returns a function that awaits them and appends the record.
 *
 * @example
 * const record = await submitCheckpoint(training, '000010', 'runs/sft', { epoch: 0, batch: 10, step: 10 }, { kind: 'both' })();
 */
export function submitCheckpoint(
  training: TrainingClient,
  name: string,
  logPath: string,
  loopState: LoopState,
  options: CheckpointOptions,
): () => Promise<CheckpointRecord> {
  const ttl = options.ttlSeconds === undefined ? {} : { ttlSeconds: options.ttlSeconds };
  const state: APIFuture<SaveWeightsResponse> | undefined = options.kind === 'sampler' ? undefined : training.saveState(name, ttl);
  const sampler: APIFuture<SaveWeightsResponse> | undefined = options.kind === 'state' ? undefined : training.saveWeightsForSampler(name, ttl);
  return async () => {
    const [statePath, samplerPath] = [(await state)?.path, (await sampler)?.path];
    const record: CheckpointRecord = {
      ...loopState,
      name,
      final: options.final ?? false,
      ...(statePath !== undefined && { state_path: statePath }),
      ...(samplerPath !== undefined && { sampler_path: samplerPath }),
    };
    mkdirSync(logPath, { recursive: true });
    appendJsonl(checkpointsFile(logPath), record);
    return record;
  };
}

/** How long periodic checkpoints are kept by default: 7 days. */
export const DEFAULT_CHECKPOINT_TTL_SECONDS = 604_800;

/**
 * Submits a mid-run checkpoint (state + sampler weights) named after its step, e.g. `000020`,
 * and returns a function that awaits it and records it (as {@link submitCheckpoint}).
 *
 * @example
 * const record = await submitStepCheckpoint(training, 'runs/dpo', { epoch: 0, batch: 20, step: 20 })();
 */
export function submitStepCheckpoint(training: TrainingClient, logPath: string, loopState: LoopState, ttlSeconds = DEFAULT_CHECKPOINT_TTL_SECONDS): () => Promise<CheckpointRecord> {
  return submitCheckpoint(training, String(loopState.step).padStart(6, '0'), logPath, loopState, { kind: 'both', ttlSeconds });
}

/**
 * Whether a loop saves after finishing step `done` - 1: every `saveEvery` steps (0 = never), except
 * the last, which gets the final checkpoint instead.
 *
 * @example
 * isSaveStep(20, 20, 100); // true
 * isSaveStep(100, 20, 100); // false: the final save covers it
 */
export function isSaveStep(done: number, saveEvery: number, totalSteps: number): boolean {
  return saveEvery > 0 && done % saveEvery === 0 && done < totalSteps;
}

/** What a training loop needs to open its training client (see {@link openTrainingClient}). */
export interface TrainingClientSource {
  service: ServiceClient;
  modelName: string;
  /** Default 32. */
  loraRank?: number;
  seed?: number;
  /** Start from these weights with a fresh optimizer (ignored when resuming). */
  loadCheckpointPath?: string;
}

/**
 * The training client of a loop: the resumed checkpoint's state with its optimizer, else
 * `loadCheckpointPath`'s weights with a fresh optimizer, else a new LoRA adapter.
 *
 * @example
 * const training = await openTrainingClient({ service, modelName: 'lathe/tiny-qwen3' }, getLastCheckpoint(logPath));
 */
export function openTrainingClient(config: TrainingClientSource, resumedFrom: CheckpointRecord | undefined): Promise<TrainingClient> {
  if (resumedFrom?.state_path !== undefined) return config.service.createTrainingClientFromStateWithOptimizer(resumedFrom.state_path);
  if (config.loadCheckpointPath !== undefined) return config.service.createTrainingClientFromState(config.loadCheckpointPath);
  return config.service.createLoraTrainingClient({
    baseModel: config.modelName,
    rank: config.loraRank ?? 32,
    ...(config.seed !== undefined && { seed: config.seed }),
  });
}
