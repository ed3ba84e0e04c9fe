/**
 * @module Built-in environments that need no download: single-turn arithmetic ("3+4=") and
 * multi-turn guess-the-number (the environment answers "Higher." / "Lower."), with datasets of
 * groups for each. Both read the first integer of the decoded action.
 */
import { ModelInput, type StopReason } from '@lathe/sdk';
import type { SupervisedExample } from '../renderers/types.js';
import { seededRandom } from '../supervised/data.js';
import type { TextTokenizer } from '../tokenizers.js';
import type { Action, Env, EnvGroupBuilder, Observation, RLDataset, StepResult } from './types.js';

/** The first integer in `text` (after leading whitespace), or undefined. */
export function parseLeadingInteger(text: string): number | undefined {
  const match = /^\s*(-?\d+)/.exec(text);
  return match === null ? undefined : Number(match[1]);
}

/** Options of {@link ArithmeticEnv}. */
export interface ArithmeticEnvOptions {
  /** Reward = formatCoef · (formatOk − 1) + correct (default 0.1, as the cookbook's ProblemEnv): 1 / 0 / −0.1. */
  formatCoef?: number;
}

/**
 * "a+b=" — reward 1 when the action starts with a + b, 0 for another number, and
 * −formatCoef when it starts with no number at all.
 *
 * @example
 * const env = new ArithmeticEnv(loadTokenizer('qwen3'), 3, 4);
 * (await env.step(tokenizer.encode('7'), 'length')).reward; // 1
 */
export class ArithmeticEnv implements Env {
  readonly #tokenizer: TextTokenizer;
  readonly a: number;
  readonly b: number;
  readonly #formatCoef: number;

  constructor(tokenizer: TextTokenizer, a: number, b: number, options: ArithmeticEnvOptions = {}) {
    this.#tokenizer = tokenizer;
    this.a = a;
    this.b = b;
    this.#formatCoef = options.formatCoef ?? 0.1;
  }

  /** The prompt text of a problem; kept short so the operands weigh in the last position's attention. */
  static question(a: number, b: number): string {
    return `${a}+${b}=`;
  }

  initialObservation(): Observation {
    return { prompt: ModelInput.fromInts(this.#tokenizer.encode(ArithmeticEnv.question(this.a, this.b))) };
  }

  step(action: Action): StepResult {
    const answer = parseLeadingInteger(this.#tokenizer.decode(action));
    const formatOk = answer !== undefined ? 1 : 0;
    const correct = answer === this.a + this.b ? 1 : 0;
    return { reward: this.#formatCoef * (formatOk - 1) + correct, episodeDone: true, metrics: { correct, format: formatOk } };
  }
}

/**
 * A format warm-up for {@link ArithmeticEnv}: every problem with a sum in 0..maxSum (default 9),
 * answered once with each of 0..maxSum, the loss on the answer only. The answers are uniform, so a
 * model trained on them learns to answer with a number but not which one: a randomly initialised
 * model (which almost never emits a digit) then gets mixed rewards, and RL a signal.
 *
 * @example
 * const examples = arithmeticFormatExamples(loadTokenizer('qwen3'), 4); // 15 problems × 5 answers
 * const dataset = new DatumDataset(examples.map((e) => datumFromExample(e)), { batchSize: examples.length });
 */
export function arithmeticFormatExamples(tokenizer: TextTokenizer, maxSum = 9): SupervisedExample[] {
  const answers = Array.from({ length: maxSum + 1 }, (_, n) => n);
  return answers.flatMap((sum) =>
    answers.slice(0, sum + 1).flatMap((a) => {
      const prompt = tokenizer.encode(ArithmeticEnv.question(a, sum - a));
      return answers.map((answer) => {
        const completion = tokenizer.encode(String(answer));
        return { tokens: [...prompt, ...completion], weights: [...prompt.map(() => 0), ...completion.map(() => 1)] };
      });
    }),
  );
}

/** Options of {@link ArithmeticDataset}. */
export interface ArithmeticDatasetOptions {
  /** Groups (problems) per batch. */
  batchSize: number;
  /** Rollouts per problem. */
  groupSize: number;
  /** Batches in the dataset. */
  numBatches: number;
  /**
   * Answers run over 0..maxSum (default 9, single digits) in turn, each split into two operands at
   * random; uniform answers leave no constant guess better than chance.
   */
  maxSum?: number;
  /** Default 0. */
  seed?: number;
  formatCoef?: number;
}

/**
 * Seeded batches of arithmetic problems, `groupSize` copies of each problem per group.
 *
 * @example
 * const dataset = new ArithmeticDataset(loadTokenizer('qwen3'), { batchSize: 8, groupSize: 8, numBatches: 20 });
 * dataset.getBatch(0).length; // 8
 */
export class ArithmeticDataset implements RLDataset {
  readonly length: number;
  readonly #tokenizer: TextTokenizer;
  readonly #options: ArithmeticDatasetOptions;

  constructor(tokenizer: TextTokenizer, options: ArithmeticDatasetOptions) {
    for (const key of ['batchSize', 'groupSize', 'numBatches'] as const) {
      if (!Number.isInteger(options[key]) || options[key] < 1) throw new RangeError(`${key} must be a positive integer, got ${options[key]}`);
    }
    this.#tokenizer = tokenizer;
    this.#options = options;
    this.length = options.numBatches;
  }

  /** The (a, b) problems of batch `index`. */
  problems(index: number): [number, number][] {
    const random = seededRandom((this.#options.seed ?? 0) * 1_000_003 + index);
    const maxSum = this.#options.maxSum ?? 9;
    // Answers cycle through 0..maxSum, so a batch of a multiple of maxSum + 1 problems holds every
    // answer equally often: the batch's gradient then has no common pull towards one answer.
    return Array.from({ length: this.#options.batchSize }, (_, g) => {
      const sum = (index * this.#options.batchSize + g) % (maxSum + 1);
      const a = Math.floor(random() * (sum + 1));
      return [a, sum - a];
    });
  }

  getBatch(index: number): EnvGroupBuilder[] {
    const envOptions = this.#options.formatCoef === undefined ? {} : { formatCoef: this.#options.formatCoef };
    return this.problems(index).map(([a, b]) => ({
      makeEnvs: () => Array.from({ length: this.#options.groupSize }, () => new ArithmeticEnv(this.#tokenizer, a, b, envOptions)),
      loggingTags: () => ['arithmetic'],
    }));
  }
}

/** Options of {@link GuessNumberEnv}. */
export interface GuessNumberEnvOptions {
  /** The secret is in 0..maxNumber (default 9). */
  maxNumber?: number;
  /** Guesses before the episode ends unsolved (default 4). */
  maxGuesses?: number;
}

/**
 * Multi-turn: the policy guesses a secret number; after a wrong guess the environment appends
 * "Higher." / "Lower." (or "Not a number.") and asks again, so each observation extends the last.
 * Reward 1 on the turn the secret is guessed, 0 otherwise; the episode ends then or after `maxGuesses`.
 *
 * @example
 * const env = new GuessNumberEnv(tokenizer, 6);
 * const first = await env.step(tokenizer.encode('3'), 'length'); // { reward: 0, episodeDone: false, nextObservation: "…3\nHigher.\nGuess: " }
 */
export class GuessNumberEnv implements Env {
  readonly #tokenizer: TextTokenizer;
  readonly secret: number;
  readonly #maxNumber: number;
  readonly #maxGuesses: number;
  #context: number[] = [];
  #guesses = 0;

  constructor(tokenizer: TextTokenizer, secret: number, options: GuessNumberEnvOptions = {}) {
    this.#tokenizer = tokenizer;
    this.secret = secret;
    this.#maxNumber = options.maxNumber ?? 9;
    this.#maxGuesses = options.maxGuesses ?? 4;
    if (!Number.isInteger(secret) || secret < 0 || secret > this.#maxNumber) throw new RangeError(`secret must be an integer in 0..${this.#maxNumber}, got ${secret}`);
  }

  initialObservation(): Observation {
    this.#context = this.#tokenizer.encode(`I picked a number from 0 to ${this.#maxNumber}.\nGuess: `);
    this.#guesses = 0;
    return { prompt: ModelInput.fromInts(this.#context) };
  }

  step(action: Action, _stopReason: StopReason): StepResult {
    this.#guesses++;
    const guess = parseLeadingInteger(this.#tokenizer.decode(action));
    const solved = guess === this.secret;
    const metrics = { solved: solved ? 1 : 0, guesses: this.#guesses, valid_guess: guess === undefined ? 0 : 1 };
    if (solved || this.#guesses >= this.#maxGuesses) return { reward: solved ? 1 : 0, episodeDone: true, metrics };
    const hint = guess === undefined ? 'Not a number.' : guess < this.secret ? 'Higher.' : 'Lower.';
    this.#context = [...this.#context, ...action, ...this.#tokenizer.encode(`\n${hint}\nGuess: `)];
    return { reward: 0, episodeDone: false, nextObservation: { prompt: ModelInput.fromInts(this.#context) }, metrics };
  }
}

/**
 * Seeded batches of guess-the-number groups (one secret per group).
 *
 * @example
 * const dataset = new GuessNumberDataset(tokenizer, { batchSize: 4, groupSize: 4, numBatches: 10 });
 */
export class GuessNumberDataset implements RLDataset {
  readonly length: number;
  readonly #tokenizer: TextTokenizer;
  readonly #options: Omit<ArithmeticDatasetOptions, 'maxSum' | 'formatCoef'> & GuessNumberEnvOptions;

  constructor(tokenizer: TextTokenizer, options: Omit<ArithmeticDatasetOptions, 'maxSum' | 'formatCoef'> & GuessNumberEnvOptions) {
    this.#tokenizer = tokenizer;
    this.#options = options;
    this.length = options.numBatches;
  }

  getBatch(index: number): EnvGroupBuilder[] {
    const random = seededRandom((this.#options.seed ?? 0) * 1_000_003 + index);
    const maxNumber = this.#options.maxNumber ?? 9;
    return Array.from({ length: this.#options.batchSize }, () => {
      const secret = Math.floor(random() * (maxNumber + 1));
      return {
        makeEnvs: () => Array.from({ length: this.#options.groupSize }, () => new GuessNumberEnv(this.#tokenizer, secret, this.#options)),
        loggingTags: () => ['guess_number'],
      };
    });
  }
}
