/**
 * @module `lathe demo`: the smallest end-to-end fine-tune. Until the HTTP server lands it talks to
 * a local worker directly.
 */
import path from 'node:path';
import { familyForModel, loadTokenizer } from '@lathe/cookbook';
import { floatsToWire, startLocalWorker, tokensToWire, wireToNumbers, type WireTensor } from '@lathe/server';

/** Options for {@link runDemo}. */
export interface DemoOptions {
  model: string;
  steps: number;
  modelsDir: string;
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

interface FwdResult {
  results: { ok: boolean; metrics?: Record<string, number>; error?: { message: string } }[];
}
interface SampleResult {
  results: { ok: boolean; sequences?: { tokens: WireTensor }[]; error?: { message: string } }[];
}

/**
 * Fine-tunes a LoRA adapter on one prompt/completion pair and reports the change.
 *
 * @example
 * const r = await runDemo({ model: 'lathe/tiny-qwen3', steps: 30, modelsDir: '.lathe/models', log: console.log });
 * r.lossAfter < r.lossBefore; // true
 */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const { log } = options;
  const tokenizer = loadTokenizer(familyForModel(options.model));
  const prompt = tokenizer.encode(PROMPT);
  const completion = tokenizer.encode(COMPLETION);
  const full = [...prompt, ...completion];
  // Position i predicts token i+1; only the completion's tokens carry weight.
  const datum = {
    tokens: tokensToWire(full.slice(0, -1)),
    loss_fn_inputs: {
      target_tokens: tokensToWire(full.slice(1)),
      weights: floatsToWire(full.slice(1).map((_, i) => (i + 1 >= prompt.length ? 1 : 0))),
    },
  };
  const item = { adapter: 'demo', loss_fn: 'cross_entropy', data: [datum] };

  log(`starting a local worker with ${options.model} ...`);
  const worker = await startLocalWorker({ modelsDir: path.resolve(options.modelsDir), model: options.model });
  try {
    const { client } = worker;
    await client.request('create_adapter', { adapter: 'demo', lora: { rank: 16, seed: 0 } });

    const meanLoss = async (): Promise<number> => {
      const reply = await client.request<FwdResult>('forward', { items: [item] });
      const result = reply.results[0];
      if (!result?.ok || !result.metrics) throw new Error(result?.error?.message ?? 'forward failed');
      return (result.metrics['loss:sum'] ?? Number.NaN) / completion.length;
    };
    const greedy = async (): Promise<string> => {
      const reply = await client.request<SampleResult>('sample', {
        items: [{ adapter: 'demo', prompt: tokensToWire(prompt), num_samples: 1, sampling_params: { max_tokens: completion.length, temperature: 0 } }],
      });
      const sequence = reply.results[0]?.sequences?.[0];
      if (!sequence) throw new Error(reply.results[0]?.error?.message ?? 'sample failed');
      return tokenizer.decode(wireToNumbers(sequence.tokens));
    };

    const lossBefore = await meanLoss();
    const sampleBefore = await greedy();
    log(`prompt:          ${JSON.stringify(PROMPT)}`);
    log(`target:          ${JSON.stringify(COMPLETION)}`);
    log(`loss before:     ${lossBefore.toFixed(4)} nats/token`);
    log(`sample before:   ${JSON.stringify(sampleBefore)}`);
    for (let step = 1; step <= options.steps; step++) {
      const reply = await client.request<FwdResult>('forward_backward', { items: [item] });
      const result = reply.results[0];
      if (!result?.ok) throw new Error(result?.error?.message ?? 'forward_backward failed');
      await client.request('optim_step', { adapter: 'demo', adam_params: { learning_rate: 1e-2 } });
      if (step % 10 === 0 || step === options.steps) {
        log(`step ${String(step).padStart(3)}  loss ${((result.metrics?.['loss:sum'] ?? Number.NaN) / completion.length).toFixed(4)}`);
      }
    }
    const lossAfter = await meanLoss();
    const sampleAfter = await greedy();
    log(`loss after:      ${lossAfter.toFixed(4)} nats/token`);
    log(`sample after:    ${JSON.stringify(sampleAfter)}`);
    return { lossBefore, lossAfter, sampleBefore, sampleAfter, target: COMPLETION };
  } finally {
    await worker.stop();
  }
}
