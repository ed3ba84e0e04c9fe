/**
 * @module @lathe/cookbook: tokenizers, renderers, datum builders and training recipes over @lathe/sdk.
 */
export * from './tokenizers.js';
