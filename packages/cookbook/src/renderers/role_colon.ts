/**
 * @module `role_colon`: `User: …\n\nAssistant: …\n\n`, the plain format for base models.
 */
import { BaseRenderer, parsed, textOf } from './base.js';
import { RendererError, type Message, type ParsedResponse, type RenderContext, type RenderedMessage } from './types.js';

const STOP = '\n\nUser:';

/**
 * Renders `Role: content` separated by blank lines; sampling stops at the string `"\n\nUser:"`,
 * and an end-of-sequence token is also a clean end. BOS comes from the tokenizer (Llama 3 has one).
 *
 * @example
 * const renderer = new RoleColonRenderer(getTokenizer('meta-llama/Llama-3.2-1B'));
 * renderer.tokenizer.decode(renderer.buildGenerationPrompt([{ role: 'user', content: 'Hi' }]));
 * // '<|begin_of_text|>User: Hi\n\nAssistant:'
 */
export class RoleColonRenderer extends BaseRenderer {
  readonly name = 'role_colon' as const;
  readonly hasExtensionProperty = true;

  renderMessage(message: Message, _context: RenderContext): RenderedMessage {
    if (message.toolCalls?.length) throw new RendererError('the role_colon renderer has no tool-calling format');
    const role = message.role.charAt(0).toUpperCase() + message.role.slice(1);
    const { header, output } = this.encodeMessage(`${role}:`, ` ${textOf(message, this.name)}\n\n`);
    // The stop string "\n\nUser:" overlaps the next header; a final assistant message is completed with it.
    const stopOverlap = message.role === 'assistant' ? this.tokenizer.encode('User:') : undefined;
    return stopOverlap === undefined ? { header, output } : { header, output, stopOverlap };
  }

  protected override bosTokens(): number[] {
    const bos = this.tokenizer.bosToken;
    return bos === undefined ? [] : [this.tokenizer.tokenId(bos)];
  }

  getStopSequences(): string[] {
    return [STOP];
  }

  parseResponse(tokens: readonly number[]): ParsedResponse {
    const eos = this.tokenizer.eosToken === undefined ? undefined : this.tokenizer.tokenId(this.tokenizer.eosToken);
    const endedWithEos = eos !== undefined && tokens.at(-1) === eos;
    const text = this.tokenizer.decode(endedWithEos ? tokens.slice(0, -1) : tokens);
    const pieces = text.split(STOP);
    const message: Message = { role: 'assistant', content: (pieces[0] ?? '').trim() };
    if (pieces.length === 1) return parsed(message, endedWithEos ? 'eos' : 'malformed');
    // Sampling should have stopped at the first "\n\nUser:"; EOS after it, or a second one, is malformed.
    return parsed(message, pieces.length === 2 && !endedWithEos ? 'stop_sequence' : 'malformed');
  }
}
