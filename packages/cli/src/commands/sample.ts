/**
 * @module `lathe sample`: one chat reply from a base model or saved sampler weights, with the
 * model's chat template (prompt rendering, stop sequences, response parsing).
 */
import { textOf, type Message, type Renderer } from '@lathe/cookbook';
import { ModelInput, type SamplingClient } from '@lathe/sdk';
import { rendererFor } from './chat.js';
import { withService, type ConnectOptions } from './connect.js';

/** Options of {@link runSample} (the command's flags). */
export interface SampleOptions extends ConnectOptions {
  /** A base model name, or a `tinker://…` sampler weights path (its base model is looked up). */
  model: string;
  prompt: string;
  system?: string;
  /** Default: the base model's recommended renderer. */
  renderer?: string;
  maxTokens: number;
  temperature: number;
  seed?: number;
  /** Status lines (stderr in the CLI). */
  log: (line: string) => void;
}

/** The reply and how it ended. */
export interface SampleResult {
  reply: string;
  /** False when the reply hit `maxTokens` before the template's end of turn. */
  complete: boolean;
  baseModel: string;
}

/**
 * Renders `prompt` as a user turn, samples the assistant's reply and parses it.
 *
 * @example
 * const { reply } = await runSample({ model: 'lathe/tiny-qwen3', prompt: 'Hi', dataDir: '.lathe', maxTokens: 32, temperature: 0, log: console.error });
 */
export async function runSample(options: SampleOptions): Promise<SampleResult> {
  const isPath = options.model.startsWith('tinker://');
  // A base model's template is checked before a server is started.
  if (!isPath) rendererFor(options.model, options.renderer);
  return withService(options, options.log, async (service) => {
    const baseModel = isPath ? (await service.createRestClient().getWeightsInfoByTinkerPath(options.model)).baseModel : options.model;
    const renderer = rendererFor(baseModel, options.renderer);
    const messages: Message[] = [...(options.system !== undefined ? [{ role: 'system' as const, content: options.system }] : []), { role: 'user', content: options.prompt }];
    const sampler = await service.createSamplingClient(isPath ? { modelPath: options.model } : { baseModel });
    return { ...(await sampleChatReply(sampler, renderer, messages, options)), baseModel };
  });
}

/**
 * Renders `messages` with `renderer`'s chat template, samples the assistant's turn (stopping at the
 * template's end of turn) and parses it.
 *
 * @example
 * const { reply } = await sampleChatReply(sampler, renderer, [{ role: 'user', content: 'Hi' }], { maxTokens: 32, temperature: 0 });
 */
export async function sampleChatReply(
  sampler: SamplingClient,
  renderer: Renderer,
  messages: Message[],
  params: { maxTokens: number; temperature: number; seed?: number },
): Promise<Omit<SampleResult, 'baseModel'>> {
  const result = await sampler.sample({
    prompt: ModelInput.fromInts(renderer.buildGenerationPrompt(messages)),
    numSamples: 1,
    samplingParams: {
      maxTokens: params.maxTokens,
      temperature: params.temperature,
      stop: renderer.getStopSequences(),
      ...(params.seed !== undefined && { seed: params.seed }),
    },
  });
  const parsed = renderer.parseResponse(result.sequences[0]?.tokens ?? []);
  return { reply: textOf(parsed.message, renderer.name), complete: parsed.ok };
}
