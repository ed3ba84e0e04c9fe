// Type-level tests of the public API, compiled by `tsc -b` (never run). Each `@ts-expect-error`
// line must fail to type-check; if the types ever accept it, the build fails.
import {
  APIError,
  APIFuture,
  LatheError,
  ModelInput,
  RequestFailedError,
  ServiceClient,
  TensorData,
  TinkerError,
  type AdamParams,
  type CustomLossFn,
  type Datum,
  type ForwardBackwardOutput,
  type LossFnType,
  type RequestErrorCategory,
  type SampleResponse,
  type SamplingParams,
  type TrainingClient,
} from '@lathe/sdk';

declare const service: ServiceClient;
declare const training: TrainingClient;
declare const data: Datum[];

export async function checks(): Promise<void> {
  // Loss functions are a closed union.
  const loss: LossFnType = 'cross_entropy';
  // @ts-expect-error: not a loss function
  const typo: LossFnType = 'crossentropy';
  training.forwardBackward(data, 'ppo', { clip_low_threshold: 0.8 });
  // @ts-expect-error: unknown loss name
  training.forwardBackward(data, 'mse');
  // @ts-expect-error: config values are numbers
  training.forwardBackward(data, 'ppo', { clip_low_threshold: '0.8' });

  // Futures are PromiseLike and await to their result type.
  const future: APIFuture<ForwardBackwardOutput> = training.forwardBackward(data, loss);
  const awaited: PromiseLike<ForwardBackwardOutput> = future;
  const out = await future;
  const lossSum: number | undefined = out.metrics['loss:sum'];
  const logprobs: TensorData | undefined = out.lossFnOutputs[0]?.['logprobs'];
  // @ts-expect-error: the result is not a sample
  const wrong: SampleResponse = await future;
  const ids: readonly string[] = await future.submitted();
  await future.result({ timeoutMs: 1000, signal: AbortSignal.timeout(5) });

  // Options are camelCase; wire names are not accepted.
  const adam: AdamParams = { learningRate: 1e-4, beta1: 0.9, weightDecay: 0, gradClipNorm: 1 };
  // @ts-expect-error: snake_case is the wire's, not the API's
  const adamWire: AdamParams = { learning_rate: 1e-4 };
  const params: SamplingParams = { maxTokens: 16, temperature: 0.7, topK: 50, topP: 0.9, seed: 1, stop: [151645] };
  // @ts-expect-error: snake_case
  const paramsWire: SamplingParams = { max_tokens: 16 };
  // @ts-expect-error: stop is strings or token ids, not a mix
  const mixedStop: SamplingParams = { stop: ['a', 1] };
  await training.optimStep(adam);
  // @ts-expect-error: optimStep needs its parameters
  await training.optimStep();
  await service.createLoraTrainingClient({ baseModel: 'm', rank: 8, seed: 0, trainMlp: true, trainAttn: true, trainUnembed: false, userMetadata: { a: 'b' } });
  // @ts-expect-error: baseModel is required
  await service.createLoraTrainingClient({ rank: 8 });
  // @ts-expect-error: snake_case option
  await service.createLoraTrainingClient({ baseModel: 'm', train_mlp: true });
  await service.createSamplingClient({ modelPath: 'tinker://r/sampler_weights/x' });
  await service.createSamplingClient({ baseModel: 'm' });
  // @ts-expect-error: one of modelPath or baseModel, not both
  await service.createSamplingClient({ modelPath: 'tinker://r/sampler_weights/x', baseModel: 'm' });

  // Datums: loss inputs keep their wire keys; values are TensorData, typed arrays or number lists.
  const datum: Datum = {
    modelInput: ModelInput.fromInts([1, 2, 3]),
    lossFnInputs: { target_tokens: [2, 3, 4], weights: Float32Array.of(1, 1, 1), advantages: TensorData.float32([0, 1, 0]), logprobs: new Float64Array(3) },
  };
  // @ts-expect-error: strings are not tensors
  const badDatum: Datum = { modelInput: ModelInput.fromInts([1]), lossFnInputs: { target_tokens: 'abc' } };
  // @ts-expect-error: modelInput must be a ModelInput, not a token list
  const rawInput: Datum = { modelInput: [1, 2, 3], lossFnInputs: {} };
  const n: number = ModelInput.fromInts([1]).appendInt(2).length;
  const tokens: number[] = ModelInput.fromInts([1]).toInts();

  // TensorData: typed arrays in, typed arrays out, by dtype.
  const f: Float32Array = TensorData.float32([1, 2]).data;
  const i: BigInt64Array = TensorData.int64([1, 2]).data;
  // @ts-expect-error: an int64 tensor holds a BigInt64Array
  const notFloat: Float32Array = TensorData.int64([1]).data;
  // @ts-expect-error: dtype is float32 | int64
  TensorData.from([1], 'float16');
  const shape: readonly number[] = TensorData.float32([1, 2, 3, 4], [2, 2]).shape;
  // @ts-expect-error: shape is read-only
  TensorData.float32([1]).shape.push(2);

  // Samples: camelCase results.
  const sampler = await training.saveWeightsAndGetSamplingClient();
  const res = await sampler.sample({ prompt: ModelInput.fromInts([1]), numSamples: 2, samplingParams: params, includePromptLogprobs: true, topkPromptLogprobs: 2 });
  const seqTokens: number[] | undefined = res.sequences[0]?.tokens;
  const stop: 'stop' | 'length' | undefined = res.sequences[0]?.stopReason;
  // @ts-expect-error: snake_case field does not exist
  res.sequences[0]?.stop_reason;
  // @ts-expect-error: prompt must be a ModelInput
  sampler.sample({ prompt: [1, 2] });
  const promptLps: (number | null)[] = await sampler.computeLogprobs(ModelInput.fromInts([1, 2]));

  // Custom losses return the loss and its gradient per datum.
  const custom: CustomLossFn = (_d, lps) => ({ loss: 0, gradients: lps.map((lp) => lp.data) });
  // @ts-expect-error: gradients are required
  const noGrad: CustomLossFn = () => ({ loss: 0 });
  await training.forwardBackwardCustom(data, custom);

  // REST: camelCase method names and results.
  const rest = service.createRestClient();
  const page = await rest.listTrainingRuns({ limit: 10, offset: 0 });
  const runId: string | undefined = page.trainingRuns[0]?.trainingRunId;
  const total: number = page.cursor.totalCount;
  const { checkpoints } = await rest.listCheckpoints('run');
  const path: string | undefined = checkpoints[0]?.tinkerPath;
  await rest.setCheckpointTtlFromTinkerPath('tinker://r/weights/x', null);
  // @ts-expect-error: Python's name is not the TypeScript one
  await rest.list_training_runs();
  // @ts-expect-error: ttl is seconds or null
  await rest.setCheckpointTtlFromTinkerPath('tinker://r/weights/x', '1h');

  // Errors form one hierarchy; categories are a closed union.
  const e: unknown = new Error();
  if (e instanceof RequestFailedError) {
    const category: RequestErrorCategory = e.category;
    // @ts-expect-error: not a category
    const bad: typeof e.category = 'client';
  }
  if (e instanceof APIError) {
    const status: number = e.status;
    const asBase: LatheError = e;
    const asTinker: TinkerError = e;
  }

  // Every method takes per-call options.
  await training.optimStep(adam, { signal: AbortSignal.timeout(1000), timeoutMs: 500, maxRetries: 1 });
  await rest.getTrainingRun('r', { timeoutMs: 100 });
  // @ts-expect-error: timeoutMs is a number of milliseconds
  await rest.getTrainingRun('r', { timeoutMs: '100ms' });

  void [typo, awaited, lossSum, logprobs, wrong, ids, adamWire, paramsWire, mixedStop, datum, badDatum, rawInput, n, tokens, f, i, notFloat, shape];
  void [seqTokens, stop, promptLps, noGrad, runId, total, path];
}
