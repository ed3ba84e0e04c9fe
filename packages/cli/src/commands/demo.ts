/**
 * @module `lathe demo`: the whole system on embedded defaults. It starts a server in this process
 * (SQLite, local worker, built-in tiny model), creates an API key, and fine-tunes a LoRA adapter
 * through the TypeScript SDK over HTTP, exactly as a user's training loop would.
 */
import { familyForModel, loadTokenizer } from '@lathe/cookbook';
import { ModelInput, type Datum, type TrainingClient } from '@lathe/sdk';
import { withService } from './connect.js';

/** Options for {@link runDemo}. */
export interface DemoOptions {
  model: string;
  steps: number;
  /** The server's data directory (database, checkpoints, models). */
  dataDir: string;
  /** Where models are found and tiny models written; default `<dataDir>/models`. */
  modelsDir?: string;
  log: (line: string) => void;
}

/** What the demo measured, for tests. */
export interface DemoResult {
  lossBefore: number;
  lossAfter: number;
  sampleBefore: string;
  sampleAfter: string;
  target: string;
}

const PROMPT = 'Q: What does a lathe do?\nA:';
const COMPLETION = ' It spins the wood while a fixed tool shapes it.';

/**
 * Fine-tunes a LoRA adapter on one prompt/completion pair through a local server and reports the
 * change in loss and in the greedy sample.
 *
 * @example
 * const r = await runDemo({ model: 'lathe/tiny-qwen3', steps: 30, dataDir: '.lathe', log: console.log });
 * r.lossAfter < r.lossBefore; // true
 */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const { log } = options;
  // An unknown model family fails here, before a server (and its worker) is started.
  const tokenizer = loadTokenizer(familyForModel(options.model));
  return withService({ dataDir: options.dataDir, ...(options.modelsDir !== undefined && { modelsDir: options.modelsDir }) }, log, async (service) => {
    const prompt = tokenizer.encode(PROMPT);
    const completion = tokenizer.encode(COMPLETION);
    const full = [...prompt, ...completion];
    // Position i predicts token i+1; only the completion's tokens carry weight.
    const datum: Datum = {
      modelInput: ModelInput.fromInts(full.slice(0, -1)),
      lossFnInputs: { target_tokens: full.slice(1), weights: full.slice(1).map((_, i) => (i + 1 >= prompt.length ? 1 : 0)) },
    };
    const training = await service.createLoraTrainingClient({ baseModel: options.model, rank: 16, seed: 0 });
    log(`training run ${training.modelId}`);

    const meanLoss = async (): Promise<number> => ((await training.forward([datum], 'cross_entropy')).metrics['loss:sum'] ?? Number.NaN) / completion.length;
    const greedy = async (client: TrainingClient): Promise<string> => {
      const sampler = await client.saveWeightsAndGetSamplingClient();
      const result = await sampler.sample({ prompt: ModelInput.fromInts(prompt), numSamples: 1, samplingParams: { maxTokens: completion.length, temperature: 0 } });
      return tokenizer.decode(result.sequences[0]?.tokens ?? []);
    };

    const lossBefore = await meanLoss();
    const sampleBefore = await greedy(training);
    log(`prompt:          ${JSON.stringify(PROMPT)}`);
    log(`target:          ${JSON.stringify(COMPLETION)}`);
    log(`loss before:     ${lossBefore.toFixed(4)} nats/token`);
    log(`sample before:   ${JSON.stringify(sampleBefore)}`);
    for (let step = 1; step <= options.steps; step++) {
      // Submit the step and its optimizer update together (pipelined), then wait for both.
      const [out] = await Promise.all([training.forwardBackward([datum], 'cross_entropy'), training.optimStep({ learningRate: 1e-2 })]);
      if (step % 10 === 0 || step === options.steps) {
        log(`step ${String(step).padStart(3)}  loss ${((out.metrics['loss:sum'] ?? Number.NaN) / completion.length).toFixed(4)}`);
      }
    }
    const lossAfter = await meanLoss();
    const sampleAfter = await greedy(training);
    log(`loss after:      ${lossAfter.toFixed(4)} nats/token`);
    log(`sample after:    ${JSON.stringify(sampleAfter)}`);
    const saved = await training.saveState('demo-final');
    log(`saved state:     ${saved.path}`);
    return { lossBefore, lossAfter, sampleBefore, sampleAfter, target: COMPLETION };
  });
}
