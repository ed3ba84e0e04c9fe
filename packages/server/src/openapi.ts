/**
 * @module The OpenAPI document, generated from the route schemas of a throwaway in-memory server.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createServer } from './app.js';

/** Where the committed document lives. */
export const OPENAPI_PATH = path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'openapi.json');

/**
 * Builds the OpenAPI document as stable, pretty-printed JSON.
 *
 * @example
 * writeFileSync(OPENAPI_PATH, await generateOpenApi());
 */
export async function generateOpenApi(): Promise<string> {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-openapi-'));
  const server = await createServer({ dataDir, databaseUrl: ':memory:', models: [] });
  try {
    return `${JSON.stringify(server.app.swagger(), null, 2)}\n`;
  } finally {
    await server.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}
