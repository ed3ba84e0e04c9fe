/**
 * @module On-policy distillation (the cookbook's `distillation/train_on_policy.py`): the student
 * samples completions, the teacher scores the student's tokens (prompt logprobs of the full
 * sequence), and each token's advantage is the negative per-token reverse KL,
 * −coef·(logp_student − logp_teacher), trained with the `importance_sampling` loss. Logs
 * `metrics.jsonl`, `config.json` and `checkpoints.jsonl` under `logPath` and resumes from there.
 */
import { ModelInput, TensorData, type Datum, type SampledSequence, type SamplingClient } from '@lathe/sdk';
import { isSaveStep, openTrainingClient, submitCheckpoint, submitStepCheckpoint, type LoopState } from '../utils/checkpoints.js';
import { completedRun, DEFAULT_ADAM, logFinalEvaluation, logStep, openRunLog, requireIntegers, requirePositiveLearningRate, type LoopConfig, type LoopResult } from '../utils/loop.js';
import { lrMultiplier, type LrSchedule } from '../utils/lr-schedule.js';
import { prefixMetrics, type Metrics } from '../utils/ml-log.js';

/** How the student samples (training rollouts and the held-out KL estimate alike). */
export interface StudentSampling {
  /** Completions per prompt (default 4). */
  samplesPerPrompt?: number;
  /** Default 16. */
  maxTokens?: number;
  /** Default 1 (the KL is that of the untempered distributions). */
  temperature?: number;
  /** Stop strings or token ids (e.g. a renderer's stop sequences). */
  stop?: string[] | number[];
  /** Base seed; step s samples with seed + s. */
  seed?: number;
}

/**
 * Settings of {@link trainOnPolicyDistillation}; `service`, `logPath`, `modelName` (the student's
 * base model; it must share the teacher's tokenizer), `teacher`, `prompts` and `numSteps` are required.
 */
export interface DistillationConfig extends LoopConfig, StudentSampling {
  /** The teacher: any sampler over a model with the same tokenizer (a base model or saved weights). */
  teacher: SamplingClient;
  /** Training prompts as tokens (e.g. a renderer's `buildGenerationPrompt`). */
  prompts: readonly (readonly number[])[];
  numSteps: number;
  /** Held-out prompts whose student‖teacher KL is logged as `test/teacher_kl`. */
  testPrompts?: readonly (readonly number[])[];
  /** Prompts per step (default 4), taken in order, wrapping around. */
  promptsPerStep?: number;
  /** Weight of the reverse KL in the advantage (default 1). */
  klPenaltyCoef?: number;
  /** Default 1e-4. */
  learningRate?: number;
  /** Default `constant`. */
  lrSchedule?: LrSchedule;
  /** Default 10 (0 = only before the first step and after the last). */
  evalEvery?: number;
}

/** What {@link trainOnPolicyDistillation} did. */
export type DistillationResult = LoopResult;

/** One scored rollout: the student's sampled tokens with both models' logprobs of them. */
export interface ScoredRollout {
  prompt: readonly number[];
  tokens: readonly number[];
  studentLogprobs: readonly number[];
  teacherLogprobs: readonly number[];
}

/**
 * Distils `teacher` into a student LoRA on the student's own samples, logging per step
 * `teacher_kl` (mean per-token logp_student − logp_teacher of the rollouts), `learning_rate`,
 * `num_sequences`, `num_tokens`, `progress/*`, `optim/*`, `time/step`, and `test/teacher_kl`
 * on `testPrompts` before every `evalEvery`-th step and after the last one; checkpoints every
 * `saveEvery` steps and at the end. A run found in `logPath` is resumed with its optimizer state.
 *
 * @example
 * const renderer = getRenderer('qwen3', loadTokenizer('qwen3'));
 * const teacher = await service.createSamplingClient({ baseModel: 'Qwen/Qwen3-8B' });
 * await trainOnPolicyDistillation({
 *   service, logPath: 'runs/distill', modelName: 'Qwen/Qwen3-8B-Base', teacher,
 *   prompts: questions.map((q) => renderer.buildGenerationPrompt([{ role: 'user', content: q }])),
 *   numSteps: 100, stop: renderer.getStopSequences(), maxTokens: 256,
 * });
 */
export async function trainOnPolicyDistillation(config: DistillationConfig): Promise<DistillationResult> {
  const { service, teacher, prompts, numSteps, testPrompts } = config;
  const promptsPerStep = config.promptsPerStep ?? 4;
  const klPenaltyCoef = config.klPenaltyCoef ?? 1;
  const learningRate = config.learningRate ?? 1e-4;
  const schedule = config.lrSchedule ?? 'constant';
  const evalEvery = config.evalEvery ?? 10;
  const saveEvery = config.saveEvery ?? 20;
  const adam = { ...DEFAULT_ADAM, ...config.adam };
  const seed = config.seed ?? 0;
  if (prompts.length === 0) throw new RangeError('no training prompts');
  requireIntegers({ numSteps, promptsPerStep }, 1);
  requireIntegers({ evalEvery, saveEvery });
  requirePositiveLearningRate(learningRate);
  lrMultiplier(schedule, 0, numSteps);

  const { logPath } = config;
  const { logger, resumedFrom, startStep } = openRunLog(config, () => training.modelId);
  if (resumedFrom?.final === true) return { training: await openTrainingClient({ ...config, seed }, resumedFrom), ...completedRun(resumedFrom) };
  // A fresh start also clears the metrics of an earlier attempt that saved no checkpoint.
  logger.truncateFrom(startStep);
  logger.logConfig({
    modelName: config.modelName,
    numSteps,
    promptsPerStep,
    samplesPerPrompt: config.samplesPerPrompt ?? 4,
    maxTokens: config.maxTokens ?? 16,
    temperature: config.temperature ?? 1,
    klPenaltyCoef,
    loraRank: config.loraRank ?? 32,
    seed,
    learningRate,
    lrSchedule: schedule,
    adam,
    evalEvery,
    saveEvery,
    ttlSeconds: config.ttlSeconds ?? null,
    loadCheckpointPath: config.loadCheckpointPath ?? null,
    numPrompts: prompts.length,
    numTestPrompts: testPrompts?.length ?? 0,
    resumedFrom: resumedFrom?.state_path ?? null,
  });
  const training = await openTrainingClient({ ...config, seed }, resumedFrom);
  // Held-out rollouts use one fixed seed, so successive estimates differ by the weights only.
  const evaluate = async (student: SamplingClient): Promise<Metrics> =>
    testPrompts === undefined || testPrompts.length === 0 ? {} : { 'test/teacher_kl': await teacherKl(student, teacher, testPrompts, { ...config, seed: seed + 1_000_003 }) };

  const loopState = (steps: number): LoopState => ({ epoch: 0, batch: steps, step: steps });
  for (let step = startStep; step < numSteps; step++) {
    if (config.signal?.aborted === true) {
      return { training, steps: step, totalSteps: numSteps, interrupted: true, ...(resumedFrom !== undefined && { resumedFrom }) };
    }
    const started = performance.now();
    const student = await training.saveWeightsAndGetSamplingClient();
    const evaluation = step === 0 || (evalEvery > 0 && step % evalEvery === 0) ? await evaluate(student) : {};
    const batchPrompts = Array.from({ length: promptsPerStep }, (_, i) => prompts[(step * promptsPerStep + i) % prompts.length]!);
    const rollouts = await scoredRollouts(student, teacher, batchPrompts, { ...config, seed: seed + step });
    const stepLr = learningRate * lrMultiplier(schedule, step, numSteps);
    const data = rollouts.map((r) => distillationDatum(r, klPenaltyCoef));
    const [, optim] = await Promise.all([training.forwardBackward(data, 'importance_sampling'), training.optimStep({ learningRate: stepLr, ...adam })]);
    if (isSaveStep(step + 1, saveEvery, numSteps)) await submitStepCheckpoint(training, logPath, loopState(step + 1), config.ttlSeconds)();
    const metrics: Metrics = {
      teacher_kl: meanReverseKl(rollouts),
      learning_rate: stepLr,
      num_sequences: rollouts.length,
      num_tokens: rollouts.reduce((n, r) => n + r.tokens.length, 0),
      'progress/batch': step,
      'progress/done_frac': (step + 1) / numSteps,
      ...prefixMetrics('optim/', optim.metrics),
      ...evaluation,
      'time/step': (performance.now() - started) / 1000,
    };
    logStep(logger, config, step, metrics);
  }
  const finalCheckpoint = await submitCheckpoint(training, 'final', logPath, loopState(numSteps), { kind: 'both', final: true })();
  logFinalEvaluation(logger, config, numSteps, await evaluate(await service.createSamplingClient({ modelPath: finalCheckpoint.sampler_path! })));
  return { training, steps: numSteps, totalSteps: numSteps, interrupted: false, finalCheckpoint, ...(resumedFrom !== undefined && { resumedFrom }) };
}

/**
 * Samples the student on each prompt and scores every sampled token under the teacher (one
 * prompt-logprobs request per rollout over prompt + completion). Empty completions are dropped.
 *
 * @example
 * const rollouts = await scoredRollouts(student, teacher, [promptTokens], { samplesPerPrompt: 8, maxTokens: 16, seed: 0 });
 */
export async function scoredRollouts(
  student: SamplingClient,
  teacher: SamplingClient,
  prompts: readonly (readonly number[])[],
  sampling: StudentSampling,
): Promise<ScoredRollout[]> {
  const perPrompt = await Promise.all(
    prompts.map(async (prompt, p) => {
      const res = await student.sample({
        prompt: ModelInput.fromInts(prompt),
        numSamples: sampling.samplesPerPrompt ?? 4,
        samplingParams: {
          maxTokens: sampling.maxTokens ?? 16,
          temperature: sampling.temperature ?? 1,
          ...(sampling.stop !== undefined && { stop: sampling.stop }),
          seed: (sampling.seed ?? 0) * 7919 + p,
        },
      });
      return Promise.all(res.sequences.filter((s) => s.tokens.length > 0).map((s) => scoreRollout(teacher, prompt, s)));
    }),
  );
  return perPrompt.flat();
}

async function scoreRollout(teacher: SamplingClient, prompt: readonly number[], sequence: SampledSequence): Promise<ScoredRollout> {
  if (sequence.logprobs === null) throw new RangeError('the student sampler returned no logprobs');
  const scored = await teacher.computeLogprobs(ModelInput.fromInts([...prompt, ...sequence.tokens]));
  const teacherLogprobs = scored.slice(prompt.length).map((v, t) => {
    if (v === null) throw new RangeError(`the teacher returned no logprob for completion token ${t}`);
    return v;
  });
  return { prompt, tokens: sequence.tokens, studentLogprobs: sequence.logprobs, teacherLogprobs };
}

/**
 * The `importance_sampling` datum of a rollout: targets are the completion tokens, `logprobs` the
 * student's sampling logprobs, and `advantages` −coef·(logp_student − logp_teacher) per token
 * (prompt positions carry zeros, so they add nothing to the loss).
 *
 * @example
 * training.forwardBackward(rollouts.map((r) => distillationDatum(r, 1)), 'importance_sampling');
 */
export function distillationDatum(rollout: ScoredRollout, klPenaltyCoef: number): Datum {
  const sequence = [...rollout.prompt, ...rollout.tokens];
  const padding = new Array<number>(rollout.prompt.length - 1).fill(0);
  const advantages = rollout.tokens.map((_, t) => -klPenaltyCoef * (rollout.studentLogprobs[t]! - rollout.teacherLogprobs[t]!));
  return {
    modelInput: ModelInput.fromInts(sequence.slice(0, -1)),
    lossFnInputs: {
      target_tokens: TensorData.int64(sequence.slice(1)),
      logprobs: TensorData.float32([...padding, ...rollout.studentLogprobs]),
      advantages: TensorData.float32([...padding, ...advantages]),
    },
  };
}

/** Mean over all sampled tokens of logp_student − logp_teacher: a Monte Carlo estimate of KL(student‖teacher) per token. */
export function meanReverseKl(rollouts: readonly ScoredRollout[]): number {
  let sum = 0;
  let count = 0;
  for (const r of rollouts) {
    r.tokens.forEach((_, t) => {
      sum += r.studentLogprobs[t]! - r.teacherLogprobs[t]!;
      count++;
    });
  }
  return count === 0 ? Number.NaN : sum / count;
}

/**
 * The per-token KL(student‖teacher) estimated on the student's samples from `prompts`.
 *
 * @example
 * const kl = await teacherKl(student, teacher, heldOutPrompts, { samplesPerPrompt: 8, seed: 1 });
 */
export async function teacherKl(student: SamplingClient, teacher: SamplingClient, prompts: readonly (readonly number[])[], sampling: StudentSampling): Promise<number> {
  return meanReverseKl(await scoredRollouts(student, teacher, prompts, sampling));
}
