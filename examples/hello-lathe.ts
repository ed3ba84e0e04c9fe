/**
 * Hello, Lathe: fine-tune the built-in tiny model to complete one sentence, then sample from it.
 *
 * Start a server and create a key (in another terminal):
 *
 *   node packages/cli/bin/lathe.js serve                      # http://127.0.0.1:8000
 *   node packages/cli/bin/lathe.js keys create --name me      # prints tml-…
 *
 * then run, from the repository root:
 *
 *   LATHE_API_KEY=tml-… node --import tsx examples/hello-lathe.ts
 *
 * `LATHE_BASE_URL` points it at another server; `HELLO_STEPS` changes the number of steps (default 12).
 * The same code runs against any Tinker-compatible server that serves the model.
 */
import { familyForModel, loadTokenizer } from '@lathe/cookbook';
import { ModelInput, ServiceClient, type Datum } from '@lathe/sdk';

const BASE_MODEL = 'lathe/tiny-qwen3';
const PROMPT = 'Q: What does a lathe do?\nA:';
const COMPLETION = ' It spins the wood while a fixed tool shapes it.';
const STEPS = Number(process.env['HELLO_STEPS'] ?? 12);

const service = new ServiceClient(); // reads LATHE_BASE_URL and LATHE_API_KEY
try {
  const { supportedModels } = await service.getServerCapabilities();
  console.log(`server models: ${supportedModels.map((m) => m.modelName).join(', ')}`);

  // Tokenize client-side, as with Tinker: the service takes token ids.
  const tokenizer = loadTokenizer(familyForModel(BASE_MODEL));
  const prompt = tokenizer.encode(PROMPT);
  const completion = tokenizer.encode(COMPLETION);
  const tokens = [...prompt, ...completion];

  // Position i predicts token i+1; only the completion's tokens carry weight.
  const datum: Datum = {
    modelInput: ModelInput.fromInts(tokens.slice(0, -1)),
    lossFnInputs: {
      target_tokens: tokens.slice(1),
      weights: tokens.slice(1).map((_, i) => (i + 1 >= prompt.length ? 1 : 0)),
    },
  };

  const training = await service.createLoraTrainingClient({ baseModel: BASE_MODEL, rank: 16, seed: 0 });
  console.log(`training run ${training.modelId}`);

  for (let step = 1; step <= STEPS; step++) {
    // Submit the step and the optimizer update together (pipelined), then wait for both.
    const fb = training.forwardBackward([datum], 'cross_entropy');
    const update = training.optimStep({ learningRate: 1e-2 });
    const [out] = await Promise.all([fb, update]);
    const loss = (out.metrics['loss:sum'] ?? Number.NaN) / completion.length;
    console.log(`step ${String(step).padStart(2)}  loss ${loss.toFixed(4)} nats/token`);
  }

  const sampler = await training.saveWeightsAndGetSamplingClient();
  const result = await sampler.sample({
    prompt: ModelInput.fromInts(prompt),
    numSamples: 1,
    samplingParams: { maxTokens: completion.length, temperature: 0 },
  });
  const sample = result.sequences[0]!;
  console.log(`prompt: ${JSON.stringify(PROMPT)}`);
  console.log(`sample: ${JSON.stringify(tokenizer.decode(sample.tokens))} (${sample.stopReason})`);
} finally {
  await service.close();
}
