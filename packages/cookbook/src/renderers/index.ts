/**
 * @module Renderers by name, and the recommended one for a model.
 */
import type { TextTokenizer } from '../tokenizers.js';
import { Llama3Renderer } from './llama3.js';
import { Qwen3Renderer } from './qwen3.js';
import { Qwen3DisableThinkingRenderer } from './qwen3_disable_thinking.js';
import { RoleColonRenderer } from './role_colon.js';
import type { Renderer, RendererName } from './types.js';

const FACTORIES: Record<RendererName, (tokenizer: TextTokenizer) => Renderer> = {
  role_colon: (tokenizer) => new RoleColonRenderer(tokenizer),
  llama3: (tokenizer) => new Llama3Renderer(tokenizer),
  qwen3: (tokenizer) => new Qwen3Renderer(tokenizer),
  qwen3_disable_thinking: (tokenizer) => new Qwen3DisableThinkingRenderer(tokenizer),
};

/** Every renderer name `getRenderer` accepts. */
export const RENDERER_NAMES = Object.keys(FACTORIES) as RendererName[];

/**
 * The renderer called `name` over `tokenizer`.
 *
 * @example
 * const renderer = getRenderer('llama3', getTokenizer('meta-llama/Llama-3.2-1B-Instruct'));
 * const prompt = renderer.buildGenerationPrompt([{ role: 'user', content: 'Hi' }]);
 */
export function getRenderer(name: string, tokenizer: TextTokenizer): Renderer {
  const factory = (FACTORIES as Record<string, ((t: TextTokenizer) => Renderer) | undefined>)[name];
  if (factory === undefined) throw new Error(`unknown renderer ${JSON.stringify(name)}; expected one of ${RENDERER_NAMES.join(', ')}`);
  return factory(tokenizer);
}

/**
 * The renderer a model was trained with: `role_colon` for base models (`*-Base`, Llama 3 without
 * `Instruct`), `llama3` for Llama 3 Instruct, `qwen3` for Qwen3 (including `lathe/tiny-qwen3`).
 *
 * @example
 * recommendedRendererName('Qwen/Qwen3-8B'); // 'qwen3'
 * recommendedRendererName('meta-llama/Llama-3.1-8B'); // 'role_colon'
 */
export function recommendedRendererName(modelName: string): RendererName {
  const lower = (modelName.split(':')[0] ?? modelName).toLowerCase();
  if (lower.endsWith('-base')) return 'role_colon';
  if (lower.includes('qwen3')) return 'qwen3';
  if (lower.includes('llama-3') || lower.includes('llama3')) {
    // The tiny test model carries the Instruct template; real base checkpoints have no "instruct" in the name.
    return lower.includes('instruct') || lower === 'lathe/tiny-llama3' ? 'llama3' : 'role_colon';
  }
  throw new Error(`no recommended renderer for model ${JSON.stringify(modelName)}; pass a renderer name (${RENDERER_NAMES.join(', ')})`);
}
