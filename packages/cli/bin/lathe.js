#!/usr/bin/env node
// Runs the built CLI (`npm run build` or `npm run setup` first).
import { main } from '../dist/main.js';

await main(process.argv);
