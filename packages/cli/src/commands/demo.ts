/**
 * @module `lathe demo`: the whole system on embedded defaults. It starts a server in this process
 * (SQLite, local worker, built-in tiny model) and, through the TypeScript SDK and the cookbook's
 * loops exactly as a user's program would, runs a short supervised fine-tuning and then a short RL
 * run, sampling before and after each, and ends with terminal plots of the loss and reward curves.
 */
import path from 'node:path';
import {
  ArithmeticDataset,
  ArithmeticEnv,
  arithmeticFormatExamples,
  datumFromExample,
  DatumDataset,
  doGroupRollout,
  getRenderer,
  getTokenizer,
  readConversationsJsonl,
  readMetrics,
  recommendedRendererName,
  trainRL,
  trainSupervised,
  type Message,
  type Role,
  type TextTokenizer,
} from '@lathe/cookbook';
import type { SamplingClient } from '@lathe/sdk';
import { linePlot } from '../plot.js';
import { ProgressBar, type ProgressStream } from '../progress.js';
import { withService } from './connect.js';
import { sampleChatReply } from './sample.js';
import { DEFAULT_SFT_DATA } from './train/sft.js';

/** Options for {@link runDemo}. */
export interface DemoOptions {
  model: string;
  /** Supervised steps (each one pass over the whole set; default 12). */
  sftSteps?: number;
  /** RL steps (default 14). */
  rlSteps?: number;
  /** The server's data directory (database, checkpoints, models). */
  dataDir: string;
  /** Where models are found and tiny models written; default `<dataDir>/models`. */
  modelsDir?: string;
  /** Where the two runs log (`sft/`, `rl/`); default a new `<dataDir>/demo/<time>`. */
  logDir?: string;
  /** Where the progress bars go (stderr in the CLI). */
  progress: ProgressStream;
  log: (line: string) => void;
}

/** What the model does at one point of the demo. */
export interface DemoProbe {
  /** The parsed greedy reply to {@link DEMO_QUESTION}. */
  reply: string;
  /** Fraction of the arithmetic problems answered right at temperature 1. */
  arithmetic: number;
}

/** What the demo measured, for tests. */
export interface DemoResult {
  target: string;
  before: DemoProbe;
  afterSft: DemoProbe;
  afterRl: DemoProbe;
  /** `train_mean_nll` of every supervised step (before its update). */
  sftLosses: number[];
  /** `env/all/reward/total` of every RL step. */
  rewards: number[];
  logDir: string;
  /** Sampler weights of the final checkpoints. */
  samplerPaths: { sft: string; rl: string };
}

/** A question of the built-in conversation set, asked before and after training. */
export const DEMO_QUESTION = 'What is the capital of France?';
// Answers 0..4: few enough that the tiny model's RL run improves measurably in a dozen steps.
const MAX_SUM = 4;
const PLOT = { width: 56, height: 10 };
// Samples per arithmetic problem when probing the policy.
const SAMPLES = 16;

/**
 * Runs the demo: supervised fine-tuning on one conversation of the built-in capitals set (chat
 * template) plus an arithmetic format warm-up ("3+1=" → a digit, any digit), then RL on the
 * arithmetic environment, which rewards the right digit; probes the model before, between and
 * after, and prints plots and a summary. (The tiny model has little capacity: RL on arithmetic
 * overwrites the chat answer, and the after-RL probe shows that too.)
 *
 * @example
 * const r = await runDemo({ model: 'lathe/tiny-qwen3', dataDir: '.lathe', progress: process.stderr, log: console.log });
 * r.afterSft.reply; // 'Paris.'
 * r.rewards.at(-1)! > r.rewards[0]!; // true
 */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const { log } = options;
  const sftSteps = options.sftSteps ?? 12;
  const rlSteps = options.rlSteps ?? 14;
  // An unknown model family fails here, before a server (and its worker) is started.
  const tokenizer = getTokenizer(options.model);
  const renderer = getRenderer(recommendedRendererName(options.model), tokenizer);
  const conversations = readConversationsJsonl(DEFAULT_SFT_DATA);
  const demoConversation = conversations.find((c) => c[0]?.content === DEMO_QUESTION)!;
  const target = demoConversation[1]!.content;
  const formatExamples = arithmeticFormatExamples(tokenizer, MAX_SUM).map((example) => datumFromExample(example));
  // A token-sum loss: the conversation's answer weighs as much as ~7 arithmetic examples, enough to be learnt in a dozen steps.
  const chatExample = datumFromExample(renderer.buildSupervisedExample(demoConversation.map((m) => ({ role: m.role as Role, content: m.content }))), { reduction: 'none' });
  const sftData = [...formatExamples, chatExample];
  const logDir = path.resolve(options.logDir ?? path.join(options.dataDir, 'demo', new Date().toISOString().replace(/[:.]/g, '-')));
  const question: Message[] = [{ role: 'user', content: DEMO_QUESTION }];

  return withService({ dataDir: options.dataDir, ...(options.modelsDir !== undefined && { modelsDir: options.modelsDir }) }, log, async (service) => {
    const probe = async (sampler: SamplingClient, when: string): Promise<DemoProbe> => {
      const [{ reply }, arithmetic] = await Promise.all([sampleChatReply(sampler, renderer, question, { maxTokens: 10, temperature: 0 }), sampledArithmetic(sampler, tokenizer)]);
      log(`${when}: ${JSON.stringify(DEMO_QUESTION)} -> ${JSON.stringify(reply)}; arithmetic ${arithmetic.text}`);
      return { reply, arithmetic: arithmetic.accuracy };
    };
    log(`model ${options.model} (${renderer.name} chat template); logs in ${logDir}`);
    const before = await probe(await service.createSamplingClient({ baseModel: options.model }), 'before training');

    log(`\n1. supervised fine-tuning, ${sftSteps} steps: the conversation ${JSON.stringify(DEMO_QUESTION)} -> ${JSON.stringify(target)} (chat template) + ${formatExamples.length} arithmetic examples "a+b=" -> a random digit (the answer format only)`);
    const sftBar = new ProgressBar(options.progress, sftSteps, 0, 'loss');
    const sft = await trainSupervised({
      service, logPath: path.join(logDir, 'sft'), modelName: options.model, dataset: new DatumDataset(sftData, { batchSize: sftData.length, seed: 0 }),
      loraRank: 8, seed: 0, learningRate: 1e-2, lrSchedule: 'linear', numEpochs: sftSteps, saveEvery: 0, evalEvery: 0,
      onStep: (step, metrics) => metrics['train_mean_nll'] !== undefined && sftBar.update(step + 1, metrics['train_mean_nll']),
      // The numbers are in metrics.jsonl; the terminal gets the progress bar.
      console: () => {},
    }).finally(() => sftBar.done());
    const sftCheckpoint = sft.finalCheckpoint!;
    const afterSft = await probe(await sft.training.createSamplingClient(sftCheckpoint.sampler_path!), 'after SFT');

    log(`\n2. RL on arithmetic (reward 1 for the right sum, 0 for another number): ${rlSteps} steps of 5 problems x 64 samples`);
    const rlBar = new ProgressBar(options.progress, rlSteps, 0, 'reward');
    const rl = await trainRL({
      service, logPath: path.join(logDir, 'rl'), modelName: options.model, loadCheckpointPath: sftCheckpoint.state_path!,
      dataset: new ArithmeticDataset(tokenizer, { batchSize: MAX_SUM + 1, groupSize: 64, numBatches: rlSteps, maxSum: MAX_SUM, seed: 0 }),
      learningRate: 2.5e-3, maxTokens: 1, temperature: 1, seed: 0, saveEvery: 0,
      onStep: (step, metrics) => rlBar.update(step + 1, metrics['env/all/reward/total'] ?? Number.NaN),
      console: () => {},
    }).finally(() => rlBar.done());
    const afterRl = await probe(rl.sampler, 'after RL');

    const sftLosses = readMetrics(path.join(logDir, 'sft')).flatMap((m) => (m['train_mean_nll'] === undefined ? [] : [m['train_mean_nll']]));
    const rewards = readMetrics(path.join(logDir, 'rl')).map((m) => m['env/all/reward/total'] ?? Number.NaN);
    log('');
    for (const line of linePlot(sftLosses, { ...PLOT, title: 'SFT loss (train_mean_nll, nats/token)' })) log(line);
    log('');
    for (const line of linePlot(rewards, { ...PLOT, title: 'RL reward (env/all/reward/total)' })) log(line);
    const samplerPaths = { sft: sftCheckpoint.sampler_path!, rl: rl.finalCheckpoint!.sampler_path! };
    const range = (values: number[]): string => `${values[0]?.toFixed(3)} -> ${values.at(-1)?.toFixed(3)}`;
    const percent = (x: number): string => `${Math.round(100 * x)}%`;
    log('\nsummary');
    log(`  SFT loss          ${range(sftLosses)} nats/token over ${sftLosses.length} steps`);
    log(`  RL reward         ${range(rewards)} over ${rewards.length} steps`);
    log(`  arithmetic        ${percent(before.arithmetic)} right before, ${percent(afterSft.arithmetic)} after SFT (chance: 20%), ${percent(afterRl.arithmetic)} after RL`);
    log(`  chat reply        ${JSON.stringify(before.reply)} before, ${JSON.stringify(afterSft.reply)} after SFT, ${JSON.stringify(afterRl.reply)} after RL`);
    log(`  logs              ${logDir}/{sft,rl}/ (metrics.jsonl, checkpoints.jsonl, config.json)`);
    log(`  sampler weights   after SFT ${samplerPaths.sft}`);
    log(`                    after RL  ${samplerPaths.rl}`);
    log(`  try               npx lathe sample --model ${samplerPaths.sft} --prompt ${JSON.stringify(DEMO_QUESTION)}`);
    return { target, before, afterSft, afterRl, sftLosses, rewards, logDir, samplerPaths };
  });
}

/**
 * Every problem with a sum in 0..MAX_SUM answered SAMPLES times at temperature 1 (seeded), as the
 * RL run samples: the fraction right (the RL reward's accuracy part) and each problem's most
 * frequent answer.
 */
async function sampledArithmetic(sampler: SamplingClient, tokenizer: TextTokenizer): Promise<{ accuracy: number; text: string }> {
  const problems = Array.from({ length: MAX_SUM + 1 }, (_, sum) => Array.from({ length: sum + 1 }, (_, a) => [a, sum - a] as const)).flat();
  const results = await Promise.all(
    problems.map(async ([a, b], index) => {
      const builder = { makeEnvs: () => Array.from({ length: SAMPLES }, () => new ArithmeticEnv(tokenizer, a, b)) };
      const { trajectories } = await doGroupRollout(builder, sampler, { maxTokens: 1, temperature: 1, seed: 1_000 * (index + 1) });
      const answers = trajectories.map((t) => tokenizer.decode(t.transitions[0]!.action).trim() || '?');
      const counts = new Map<string, number>();
      for (const answer of answers) counts.set(answer, (counts.get(answer) ?? 0) + 1);
      const common = [...counts].reduce((best, entry) => (entry[1] > best[1] ? entry : best))[0];
      return { text: `${ArithmeticEnv.question(a, b)}${common}`, correct: trajectories.filter((t) => t.transitions[0]!.metrics['correct'] === 1).length };
    }),
  );
  const accuracy = results.reduce((n, r) => n + r.correct, 0) / (problems.length * SAMPLES);
  return { accuracy, text: `${Math.round(100 * accuracy)}% right at temperature 1; most frequent answers ${results.map((r) => r.text).join(' ')}` };
}
