/**
 * @module @lathe/cookbook/browser: the parts of the cookbook that run in a browser (no Node
 * modules): tokenizers built from their JSON, and the chat renderers. The dashboard's playground
 * renders prompts and parses replies with these, exactly as training does.
 *
 * @example
 * import { getRenderer, recommendedRendererName, tokenizerFromJson } from '@lathe/cookbook/browser';
 * const tokenizer = tokenizerFromJson(tokenizerJson, tokenizerConfig, 'qwen3');
 * const renderer = getRenderer(recommendedRendererName('lathe/tiny-qwen3'), tokenizer);
 * const prompt = renderer.buildGenerationPrompt([{ role: 'user', content: 'Hi' }]);
 */
export * from './tokenizer-json.js';
export * from './renderers/types.js';
export { getRenderer, recommendedRendererName, RENDERER_NAMES } from './renderers/index.js';
