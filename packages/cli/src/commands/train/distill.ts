/**
 * @module `lathe train distill`: on-policy distillation of a teacher (a base model or saved sampler
 * weights) into a LoRA student on prompts, with the cookbook's `trainOnPolicyDistillation`.
 */
import { catchphraseConversations, getTokenizer, readConversationsJsonl, splitHeldOut, trainOnPolicyDistillation, type Conversation } from '@lathe/cookbook';
import type { SamplingClient, ServiceClient } from '@lathe/sdk';
import { rendererFor, toMessages } from '../chat.js';
import { defaultLearningRate, defaultTestSize, runTraining, type RenderedDataOptions, type TrainCommonOptions, type TrainResult } from './run.js';

/** Options of {@link runTrainDistill} (the command's flags). */
export interface TrainDistillOptions extends TrainCommonOptions, RenderedDataOptions {
  /** A base model with the student's tokenizer, or `tinker://…` sampler weights. */
  teacher: string;
  /**
   * Conversation JSONL whose conversations, without their trailing assistant messages, are the
   * prompts (default: built-in questions on sixteen topics).
   */
  data?: string;
  steps: number;
  promptsPerStep: number;
  samplesPerPrompt: number;
  maxTokens: number;
  temperature: number;
  /** Weight of the reverse KL in the advantage. */
  klCoef: number;
}

/**
 * Distils `teacher` into a LoRA student on its own samples (learning rate default: the cookbook's
 * `getLr(model)`), logging `teacher_kl` (per-token KL(student‖teacher)) and the rest of the
 * cookbook's distillation metrics. A run stopped by `signal` records a checkpoint; running again
 * with the same `logDir` continues from it.
 *
 * @example
 * await runTrainDistill({ model: 'lathe/tiny-qwen3', teacher: 'tinker://…/sampler_weights/final', logDir: 'runs/distill', dataDir: '.lathe', steps: 20, promptsPerStep: 4, samplesPerPrompt: 4, maxTokens: 32, temperature: 1, klCoef: 1, evalEvery: 10, loraRank: 32, saveEvery: 20, seed: 0, progress: process.stderr, log: console.error });
 */
export async function runTrainDistill(options: TrainDistillOptions): Promise<TrainResult> {
  const renderer = rendererFor(options.model, options.renderer);
  const learningRate = options.lr ?? defaultLearningRate(options.model);
  const source = options.data ?? 'the built-in questions';
  const conversations = options.data !== undefined ? readConversationsJsonl(options.data) : catchphraseConversations(16);
  const prompts = conversations.map((conversation, index) => renderer.buildGenerationPrompt(toMessages(promptOf(conversation, `${source}: conversation ${index + 1}`))));
  const testSize = options.testSize ?? defaultTestSize(prompts.length);
  const { train, test } = splitHeldOut(prompts, testSize, options.seed);
  const teacherIsPath = options.teacher.startsWith('tinker://');
  // A named teacher is checked before a server is started; saved weights once their base model is known.
  if (!teacherIsPath) checkTeacherTokenizer(options, options.teacher);
  return runTraining(options, {
    summary: `${options.model} (${renderer.name} renderer) distilled from ${options.teacher} on ${train.length} prompts of ${source}, ${testSize} held out, ${options.steps} steps, lr ${learningRate}`,
    totalSteps: options.steps,
    headline: { label: 'KL', metric: 'teacher_kl' },
    train: async (hooks) =>
      trainOnPolicyDistillation({
        ...hooks,
        modelName: options.model,
        teacher: await openTeacher(hooks.service, options),
        prompts: train,
        testPrompts: test,
        numSteps: options.steps,
        promptsPerStep: options.promptsPerStep,
        samplesPerPrompt: options.samplesPerPrompt,
        maxTokens: options.maxTokens,
        temperature: options.temperature,
        stop: renderer.getStopSequences(),
        klPenaltyCoef: options.klCoef,
        loraRank: options.loraRank,
        seed: options.seed,
        learningRate,
        evalEvery: options.evalEvery,
        saveEvery: options.saveEvery,
      }),
  });
}

/** The teacher's sampler; saved weights must sit on a base model with the student's tokenizer. */
async function openTeacher(service: ServiceClient, options: TrainDistillOptions): Promise<SamplingClient> {
  if (!options.teacher.startsWith('tinker://')) return service.createSamplingClient({ baseModel: options.teacher });
  checkTeacherTokenizer(options, (await service.createRestClient().getWeightsInfoByTinkerPath(options.teacher)).baseModel);
  return service.createSamplingClient({ modelPath: options.teacher });
}

/** The teacher scores the student's tokens, so both must read them alike. */
function checkTeacherTokenizer(options: TrainDistillOptions, teacherBase: string): void {
  const [teacher, student] = [getTokenizer(teacherBase), getTokenizer(options.model)];
  if (teacher !== student && (teacher.family === undefined || teacher.family !== student.family)) {
    throw new Error(`the teacher ${options.teacher} (base model ${teacherBase}) does not share ${options.model}'s tokenizer`);
  }
}

/** A conversation without its trailing assistant messages: what the student answers. */
function promptOf(conversation: Conversation, where: string): Conversation {
  let end = conversation.length;
  while (end > 0 && conversation[end - 1]!.role === 'assistant') end--;
  if (end === 0) throw new Error(`${where} has no message before its answer to prompt with`);
  return conversation.slice(0, end);
}
