/**
 * @module `qwen3_disable_thinking`: Qwen3 with reasoning switched off, as `enable_thinking=False` does.
 */
import { Qwen3Renderer } from './qwen3.js';
import type { RenderContext, Role } from './types.js';

/**
 * Qwen3 whose generation prompt ends with an empty think block, `<think>\n\n</think>\n\n`, as the
 * official template writes it with `enable_thinking=False`. Supervised examples put no loss on that
 * block, and refuse a final assistant message that carries reasoning.
 *
 * @example
 * const renderer = new Qwen3DisableThinkingRenderer(getTokenizer('Qwen/Qwen3-8B'));
 * renderer.tokenizer.decode(renderer.buildGenerationPrompt([{ role: 'user', content: 'Hi' }]));
 * // '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n'
 */
export class Qwen3DisableThinkingRenderer extends Qwen3Renderer {
  override readonly name = 'qwen3_disable_thinking' as const;
  override readonly disablesThinking = true;

  protected override generationSuffix(role: Role, context: RenderContext): number[] {
    const header = super.generationSuffix(role, context);
    return role === 'assistant' ? [...header, ...this.tokenizer.encode('<think>\n\n</think>\n\n')] : header;
  }
}
