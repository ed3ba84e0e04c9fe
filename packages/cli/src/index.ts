export { buildProgram, main, parseInteger } from './main.js';
