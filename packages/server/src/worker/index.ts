export * from './frames.js';
export * from './tensor.js';
export * from './client.js';
export * from './process.js';
export * from './pool.js';
export * from './catalogue.js';
export * from './remote.js';
