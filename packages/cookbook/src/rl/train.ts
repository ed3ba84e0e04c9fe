/**
 * @module The RL loop (the cookbook's `rl/train.py`): roll out groups of environments with the
 * current sampler, centre rewards within each group, train with `importance_sampling` (or `ppo`)
 * and publish a fresh sampler after every optimizer step. With `maxStaleness` k > 0 the rollouts of
 * the next k batches run while the trainer works (off-policy by at most k steps). Logs
 * `metrics.jsonl`, `config.json` and `checkpoints.jsonl` under `logPath` and resumes from there.
 */
import type { LossFnConfig, SamplingClient } from '@lathe/sdk';
import { submitCheckpoint, openTrainingClient } from '../utils/checkpoints.js';
import { completedRun, DEFAULT_ADAM, logStep, openRunLog, requireIntegers, requirePositiveLearningRate, type LoopConfig, type LoopResult } from '../utils/loop.js';
import type { Metrics } from '../utils/ml-log.js';
import { applyKlPenalty, assembleTrainingData, computeReferenceLogprobs, sampleTrainKlMetrics, trajectoryMetrics } from './data.js';
import { doGroupRollout, type RolloutParams } from './rollouts.js';
import type { RLDataset, TrajectoryGroup } from './types.js';

/** Settings of {@link trainRL}; `service`, `logPath`, `modelName`, `dataset`, `learningRate` and `maxTokens` are required. */
export interface RLConfig extends LoopConfig {
  dataset: RLDataset;
  learningRate: number;
  /** Most tokens sampled per turn. */
  maxTokens: number;
  /** Default 1. */
  temperature?: number;
  /** Turns before an episode is cut off (default 16). */
  maxTurns?: number;
  /** Seeds the adapter's initialisation and every rollout's sampling. */
  seed?: number;
  /** Default `importance_sampling`. */
  lossFn?: 'importance_sampling' | 'ppo';
  /** e.g. `{ clip_low_threshold: 0.8, clip_high_threshold: 1.2 }` for `ppo`. */
  lossFnConfig?: LossFnConfig;
  /** β of the KL penalty against `klReference` (default 0 = none). */
  klPenaltyCoef?: number;
  /** The reference policy of the KL penalty (e.g. `service.createSamplingClient({ baseModel })`); required when `klPenaltyCoef` > 0. */
  klReference?: SamplingClient;
  /** Rollouts may come from a sampler at most this many optimizer steps old (default 0 = on-policy). */
  maxStaleness?: number;
  /** Stop after this many steps (default: one per dataset batch). */
  maxSteps?: number;
}

/** What {@link trainRL} did. */
export interface RLResult extends LoopResult {
  /** A sampler of the final weights. */
  sampler: SamplingClient;
}

/**
 * Trains a policy by RL on `dataset`'s groups of environments.
 *
 * @example
 * const dataset = new ArithmeticDataset(loadTokenizer('qwen3'), { batchSize: 8, groupSize: 8, numBatches: 50 });
 * await trainRL({ service, logPath: 'runs/rl', modelName: 'Qwen/Qwen3-8B', dataset, learningRate: 4e-5, maxTokens: 4 });
 */
export async function trainRL(config: RLConfig): Promise<RLResult> {
  const { service, logPath, dataset } = config;
  const adam = { ...DEFAULT_ADAM, ...config.adam };
  const lossFn = config.lossFn ?? 'importance_sampling';
  const klPenaltyCoef = config.klPenaltyCoef ?? 0;
  const maxStaleness = config.maxStaleness ?? 0;
  const saveEvery = config.saveEvery ?? 20;
  requireIntegers({ maxStaleness, saveEvery, maxTokens: config.maxTokens });
  requirePositiveLearningRate(config.learningRate);
  if (!(klPenaltyCoef >= 0)) throw new RangeError(`klPenaltyCoef must be >= 0, got ${klPenaltyCoef}`);
  if (klPenaltyCoef > 0 && config.klReference === undefined) throw new RangeError('klPenaltyCoef > 0 needs klReference (a sampling client of the reference policy)');
  const totalSteps = Math.min(dataset.length, config.maxSteps ?? Number.POSITIVE_INFINITY);
  if (totalSteps < 1) throw new RangeError(`nothing to train: ${totalSteps} steps`);

  const { logger, resumedFrom, startStep } = openRunLog(config, () => training.modelId);
  if (resumedFrom?.final === true) {
    const training = await openTrainingClient(config, resumedFrom);
    return { training, sampler: await training.createSamplingClient(resumedFrom.sampler_path!), ...completedRun(resumedFrom) };
  }
  if (resumedFrom !== undefined) logger.truncateFrom(startStep);
  logger.logConfig({
    modelName: config.modelName,
    loraRank: config.loraRank ?? 32,
    seed: config.seed ?? null,
    learningRate: config.learningRate,
    maxTokens: config.maxTokens,
    temperature: config.temperature ?? 1,
    maxTurns: config.maxTurns ?? 16,
    lossFn,
    lossFnConfig: config.lossFnConfig ?? null,
    klPenaltyCoef,
    maxStaleness,
    maxSteps: config.maxSteps ?? null,
    adam,
    saveEvery,
    ttlSeconds: config.ttlSeconds ?? 604_800,
    loadCheckpointPath: config.loadCheckpointPath ?? null,
    totalSteps,
    resumedFrom: resumedFrom?.state_path ?? null,
  });

  const training = await openTrainingClient(config, resumedFrom);
  let sampler = await training.saveWeightsAndGetSamplingClient();
  const rolloutParams = (batch: number, group: number): RolloutParams => ({
    maxTokens: config.maxTokens,
    temperature: config.temperature ?? 1,
    ...(config.maxTurns !== undefined && { maxTurns: config.maxTurns }),
    ...(config.seed !== undefined && { seed: ((config.seed * 1_000_003 + batch * 7_919 + group * 104_729) % 2 ** 31) * 64 }),
  });
  const launch = (batch: number, samplerStep: number): Promise<TrajectoryGroup[]> => {
    const current = sampler;
    return Promise.all(dataset.getBatch(batch).map((builder, g) => doGroupRollout(builder, current, rolloutParams(batch, g), samplerStep)));
  };
  // Batch index → its rollouts, started with the sampler of the step they were launched at.
  const pending = new Map<number, Promise<TrajectoryGroup[]>>();
  // Failed rollouts of batches never awaited (an interrupted run) must not surface as unhandled.
  const discard = (): void => pending.forEach((p) => p.catch(() => {}));

  let step = startStep;
  let interrupted = false;
  try {
    for (; step < totalSteps; step++) {
      if (config.signal?.aborted === true) {
        interrupted = true;
        break;
      }
      const started = performance.now();
      for (let batch = step; batch <= Math.min(step + maxStaleness, totalSteps - 1); batch++) {
        if (!pending.has(batch)) pending.set(batch, launch(batch, step));
      }
      let groups = await pending.get(step)!;
      pending.delete(step);
      // By construction rollouts are at most maxStaleness steps old; re-sample if that ever breaks.
      if (groups.some((g) => step - g.samplerStep > maxStaleness)) groups = await launch(step, step);
      const rolloutSeconds = (performance.now() - started) / 1000;

      let data = assembleTrainingData(groups);
      const metrics: Metrics = { ...trajectoryMetrics(groups) };
      if (klPenaltyCoef > 0 && data.length > 0) {
        const penalised = applyKlPenalty(data, await computeReferenceLogprobs(config.klReference!, data), klPenaltyCoef);
        data = penalised.data;
        metrics['kl_policy_base'] = penalised.klPolicyBase;
      }
      if (data.length > 0) {
        // Submitted together: the optimizer step queues right behind its forward/backward.
        const forwardBackward = training.forwardBackward(
          data.map((d) => d.datum),
          lossFn,
          config.lossFnConfig,
        );
        const optim = training.optimStep({ learningRate: config.learningRate, ...adam });
        const [out, optimOut] = await Promise.all([forwardBackward, optim]);
        Object.assign(metrics, sampleTrainKlMetrics(data, out.lossFnOutputs.map((o) => o['logprobs']!)));
        for (const [name, value] of Object.entries(out.metrics)) metrics[`optim/${name}`] = value;
        for (const [name, value] of Object.entries(optimOut.metrics)) metrics[`optim/${name}`] = value;
      }
      // Every group constant: no gradient, so no optimizer step (Adam would still move the weights).
      const done = step + 1;
      if (saveEvery > 0 && done % saveEvery === 0 && done < totalSteps) {
        const record = await submitCheckpoint(training, String(done).padStart(6, '0'), logPath, { epoch: 0, batch: done, step: done }, {
          kind: 'both',
          ttlSeconds: config.ttlSeconds ?? 604_800,
        })();
        sampler = await training.createSamplingClient(record.sampler_path!);
      } else if (data.length > 0) {
        sampler = await training.saveWeightsAndGetSamplingClient();
      }
      Object.assign(metrics, {
        num_datums: data.length,
        num_groups: groups.length,
        'optim/lr': config.learningRate,
        'async/steps_off_policy': Math.max(...groups.map((g) => step - g.samplerStep)),
        'progress/batch': step,
        'progress/done_frac': done / totalSteps,
        'time/rollout': rolloutSeconds,
        'time/step': (performance.now() - started) / 1000,
      });
      logStep(logger, config, step, metrics);
    }
  } finally {
    discard();
  }
  if (interrupted) return { training, sampler, steps: step, totalSteps, interrupted, ...(resumedFrom !== undefined && { resumedFrom }) };
  const finalCheckpoint = await submitCheckpoint(training, 'final', logPath, { epoch: 0, batch: totalSteps, step: totalSteps }, { kind: 'both', final: true })();
  return { training, sampler, steps: totalSteps, totalSteps, interrupted, finalCheckpoint, ...(resumedFrom !== undefined && { resumedFrom }) };
}
