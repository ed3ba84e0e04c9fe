/**
 * @module What every renderer shares: assembling prompts and weighted supervised examples from
 * per-message chunks, and cutting a sampled response at its stop token.
 */
import type { TextTokenizer } from '../tokenizers.js';
import {
  RendererError,
  type Message,
  type ParseTermination,
  type RenderContext,
  type RenderedMessage,
  type Renderer,
  type RendererName,
  type Role,
  type SupervisedExample,
  type ToolSpec,
  type TrainOnWhat,
  type ParsedResponse,
} from './types.js';

/** A message's text; thinking parts are refused because this format has no place for them. */
export function textOf(message: Message, rendererName: string): string {
  if (typeof message.content === 'string') return message.content;
  return message.content
    .map((part) => {
      if (part.type === 'thinking') throw new RendererError(`the ${rendererName} renderer has no format for thinking parts`);
      return part.text;
    })
    .join('');
}

/** Index of the last user message, -1 when there is none. */
export function lastUserIndex(messages: readonly Message[]): number {
  return messages.findLastIndex((m) => m.role === 'user');
}

/**
 * Base for renderers: subclasses say how one message renders (`renderMessage`), this class assembles
 * prompts and supervised examples.
 *
 * @example
 * class ShoutRenderer extends RoleColonRenderer {
 *   override renderMessage(message: Message, context: RenderContext): RenderedMessage {
 *     return super.renderMessage({ ...message, content: textOf(message, 'shout').toUpperCase() }, context);
 *   }
 * }
 */
export abstract class BaseRenderer implements Renderer {
  abstract readonly name: RendererName;
  abstract readonly hasExtensionProperty: boolean;
  /** True for renderers whose generation prompt closes the think block (training on reasoning is then refused). */
  readonly disablesThinking: boolean = false;

  constructor(readonly tokenizer: TextTokenizer) {}

  abstract renderMessage(message: Message, context: RenderContext): RenderedMessage;
  abstract getStopSequences(): number[] | string[];
  abstract parseResponse(tokens: readonly number[]): ParsedResponse;

  createConversationPrefixWithTools(_tools: readonly ToolSpec[], _systemPrompt?: string): Message[] {
    throw new RendererError(`the ${this.name} renderer has no tool-calling format`);
  }

  /** Tokens before the first message (BOS where the format has one). */
  protected bosTokens(): number[] {
    return [];
  }

  /** Index of the message after which the conversation's last turn begins. */
  protected lastQueryIndex(messages: readonly Message[]): number {
    return lastUserIndex(messages);
  }

  /** Tokens that open a new message of `role` for the model to complete. */
  protected generationSuffix(role: Role, context: RenderContext): number[] {
    return this.renderMessage({ role, content: '' }, context).header;
  }

  /**
   * Encodes `header + output` in one piece, as a chat template does, and splits the tokens where the
   * header's own tokens end, so a merge across the boundary cannot make the ids differ from the template's.
   */
  protected encodeMessage(header: string, output: string): { header: number[]; output: number[] } {
    const all = this.tokenizer.encode(header + output);
    const headerOnly = this.tokenizer.encode(header);
    let split = 0;
    while (split < headerOnly.length && headerOnly[split] === all[split]) split++;
    return { header: all.slice(0, split), output: all.slice(split) };
  }

  private contexts(messages: readonly Message[]): RenderContext[] {
    const lastQuery = this.lastQueryIndex(messages);
    return messages.map((_, index) => ({
      index,
      isLast: index === messages.length - 1,
      previous: messages[index - 1],
      next: messages[index + 1],
      lastUserIndex: lastQuery,
    }));
  }

  /**
   * The prompt for sampling the next message.
   *
   * @example
   * const renderer = getRenderer('qwen3', getTokenizer('Qwen/Qwen3-8B'));
   * const prompt = renderer.buildGenerationPrompt([{ role: 'user', content: 'Hi' }]);
   * // tokens of '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n'
   */
  buildGenerationPrompt(messages: readonly Message[], options: { role?: Role; prefill?: string } = {}): number[] {
    const role = options.role ?? 'assistant';
    const tokens = [...this.bosTokens()];
    const contexts = this.contexts(messages);
    messages.forEach((message, i) => {
      const rendered = this.renderMessage(message, contexts[i] as RenderContext);
      tokens.push(...rendered.header, ...rendered.output);
    });
    const index = messages.length;
    tokens.push(
      ...this.generationSuffix(role, { index, isLast: true, previous: messages[index - 1], next: undefined, lastUserIndex: this.lastQueryIndex(messages) }),
    );
    if (options.prefill !== undefined && options.prefill !== '') tokens.push(...this.tokenizer.encode(options.prefill));
    return tokens;
  }

  /**
   * The whole conversation's tokens with a loss weight per token: 1 on the outputs `trainOnWhat`
   * selects, 0 elsewhere. Tokens the generation prompt always supplies (an empty think block) get 0.
   *
   * @example
   * const { tokens, weights } = renderer.buildSupervisedExample(
   *   [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }],
   *   { trainOnWhat: 'last_assistant_message' },
   * );
   * // weights are 1 exactly on 'Hello!<|im_end|>'
   */
  buildSupervisedExample(messages: readonly Message[], options: { trainOnWhat?: TrainOnWhat } = {}): SupervisedExample {
    const trainOnWhat = options.trainOnWhat ?? 'last_assistant_message';
    const tokens = [...this.bosTokens()];
    const weights: number[] = tokens.map(() => 0);
    const push = (chunk: readonly number[], weight: number): void => {
      for (const token of chunk) {
        tokens.push(token);
        weights.push(weight);
      }
    };
    const contexts = this.contexts(messages);
    let lastOutputWeight = 0;
    let stopOverlap: number[] | undefined;
    let lastMessageStart = tokens.length;
    messages.forEach((message, i) => {
      const context = contexts[i] as RenderContext;
      if (trainOnWhat === 'customized' && message.trainable === undefined) {
        throw new RendererError(`trainOnWhat 'customized' needs 'trainable' on every message; message ${i} has none`);
      }
      if (trainOnWhat !== 'customized' && message.trainable !== undefined) {
        throw new RendererError(`message ${i} sets 'trainable', which only trainOnWhat 'customized' reads`);
      }
      const rendered = this.renderMessage(message, context);
      lastMessageStart = tokens.length;
      lastOutputWeight = outputIsTrained(message, context, trainOnWhat) ? 1 : 0;
      push(rendered.header, trainOnWhat === 'all_tokens' ? 1 : 0);
      push(rendered.output, lastOutputWeight);
      stopOverlap = rendered.stopOverlap;
    });
    if (stopOverlap !== undefined) push(stopOverlap, lastOutputWeight);
    this.zeroWhatThePromptSupplies(messages, tokens, weights, lastMessageStart, trainOnWhat);
    return { tokens, weights };
  }

  /**
   * Supervised examples that train every selected assistant message as the model saw it when writing
   * it: one example when prompts extend each other, otherwise one per trained assistant message, each
   * ending at that message (Qwen3 drops old reasoning from history, so one sequence would train on
   * stripped turns).
   *
   * @example
   * const examples = renderer.buildSupervisedExamples(conversation, { trainOnWhat: 'all_assistant_messages' });
   */
  buildSupervisedExamples(messages: readonly Message[], options: { trainOnWhat?: TrainOnWhat } = {}): SupervisedExample[] {
    const trainOnWhat = options.trainOnWhat ?? 'last_assistant_turn';
    if (this.hasExtensionProperty) return [this.buildSupervisedExample(messages, { trainOnWhat })];
    const contexts = this.contexts(messages);
    const examples: SupervisedExample[] = [];
    messages.forEach((message, i) => {
      if (message.role !== 'assistant' || !outputIsTrained(message, contexts[i] as RenderContext, trainOnWhat)) return;
      const upTo = messages.slice(0, i + 1).map(({ trainable: _trainable, ...rest }) => rest);
      examples.push(this.buildSupervisedExample(upTo, { trainOnWhat: 'last_assistant_message' }));
    });
    return examples;
  }

  // The model is never trained to write tokens its generation prompt always gives it (a prefilled think block).
  private zeroWhatThePromptSupplies(
    messages: readonly Message[],
    tokens: number[],
    weights: number[],
    lastMessageStart: number,
    trainOnWhat: TrainOnWhat,
  ): void {
    const last = messages.at(-1);
    if (last === undefined || last.role !== 'assistant' || trainOnWhat === 'all_tokens') return;
    const prompt = this.buildGenerationPrompt(messages.slice(0, -1));
    const isPrefix = prompt.length <= tokens.length && prompt.every((token, i) => tokens[i] === token);
    if (!isPrefix) {
      if (this.disablesThinking) {
        throw new RendererError(`the ${this.name} renderer closes the think block in its prompt, so it cannot train on a final assistant message with reasoning`);
      }
      return;
    }
    if (prompt.length > lastMessageStart) weights.fill(0, lastMessageStart, prompt.length);
  }

  /**
   * Decodes a response up to its single stop token. No stop token: `malformed` (the sample was
   * cut off); more than one: the sampler ignored the stop sequences, which is an error.
   */
  protected cutAtStopToken(tokens: readonly number[], stopToken: number): { text: string; termination: ParseTermination } {
    const count = tokens.filter((t) => t === stopToken).length;
    if (count === 0) return { text: this.tokenizer.decode(tokens), termination: 'malformed' };
    if (count > 1) {
      throw new RendererError(`response has ${count} stop tokens (${stopToken}); sample with the renderer's stop sequences so it ends at the first`);
    }
    return { text: this.tokenizer.decode(tokens.slice(0, tokens.indexOf(stopToken))), termination: 'stop_sequence' };
  }
}

function outputIsTrained(message: Message, context: RenderContext, trainOnWhat: TrainOnWhat): boolean {
  switch (trainOnWhat) {
    case 'last_assistant_message':
      return context.isLast && message.role === 'assistant';
    case 'last_assistant_turn':
      return message.role === 'assistant' && context.index > context.lastUserIndex;
    case 'all_assistant_messages':
      return message.role === 'assistant';
    case 'all_messages':
    case 'all_tokens':
      return true;
    case 'all_user_and_system_messages':
      return message.role === 'user' || message.role === 'system';
    case 'customized':
      return message.trainable === true;
  }
}

/** A parse result from a message and how the response ended. */
export function parsed(message: Message, termination: ParseTermination): ParsedResponse {
  return { message, termination, ok: termination !== 'malformed' };
}
