/**
 * @module `llama3`: the Llama 3 Instruct chat format.
 */
import { BaseRenderer, parsed, textOf } from './base.js';
import { RendererError, type Message, type ParsedResponse, type RenderContext, type RenderedMessage } from './types.js';

/**
 * `<|begin_of_text|>` then `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>` per
 * message, content trimmed as the official template does; sampling stops at `<|eot_id|>`.
 * No thinking or tool-call format.
 *
 * @example
 * const renderer = new Llama3Renderer(getTokenizer('meta-llama/Llama-3.2-1B-Instruct'));
 * renderer.getStopSequences(); // [128009]
 */
export class Llama3Renderer extends BaseRenderer {
  readonly name = 'llama3' as const;
  readonly hasExtensionProperty = true;

  renderMessage(message: Message, _context: RenderContext): RenderedMessage {
    if (message.toolCalls?.length) throw new RendererError('the llama3 renderer has no tool-calling format');
    const output = `${textOf(message, this.name).trim()}<|eot_id|>`;
    return this.encodeMessage(`<|start_header_id|>${message.role}<|end_header_id|>\n\n`, output);
  }

  protected override bosTokens(): number[] {
    return [this.tokenizer.tokenId('<|begin_of_text|>')];
  }

  getStopSequences(): number[] {
    return [this.tokenizer.tokenId('<|eot_id|>')];
  }

  parseResponse(tokens: readonly number[]): ParsedResponse {
    const { text, termination } = this.cutAtStopToken(tokens, this.tokenizer.tokenId('<|eot_id|>'));
    return parsed({ role: 'assistant', content: text }, termination);
  }
}
