/** Builds web/dist (the page, the JS and CSS bundles, the tokenizer files); resolves to its path. */
export function buildDashboard(): Promise<string>;
