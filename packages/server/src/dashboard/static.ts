/**
 * @module Serves the built dashboard (`web/dist`, made by `node web/build.mjs` during set-up): the
 * page at `/` and its files under `/static/`. No API key: the page asks for one and sends it with
 * every API call itself.
 */
import { createReadStream, existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { notFound } from '../http/errors.js';
import type { TypedApp } from '../routes/context.js';
import { REPO_ROOT } from '../worker/process.js';

/** Where the dashboard build lies. */
export const DASHBOARD_DIR = path.join(REPO_ROOT, 'web', 'dist');

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
};

const NOT_BUILT = `<!doctype html><title>Lathe</title><p>The dashboard is not built yet: run <code>node scripts/setup.mjs</code> (or <code>node web/build.mjs</code>) and reload.</p>`;

/** Registers `GET /` and `GET /static/*` for the files of `dir` (default {@link DASHBOARD_DIR}). */
export function serveDashboard(app: TypedApp, dir = DASHBOARD_DIR): void {
  app.get('/', { schema: { hide: true } }, async (_request, reply) => {
    const index = path.join(dir, 'index.html');
    if (!existsSync(index)) return reply.code(503).type(CONTENT_TYPES['.html']!).send(NOT_BUILT);
    return reply.type(CONTENT_TYPES['.html']!).header('cache-control', 'no-cache').send(createReadStream(index));
  });

  app.get<{ Params: { '*': string } }>('/static/*', { schema: { hide: true } }, async (request, reply) => {
    const file = path.resolve(dir, request.params['*']);
    // Only files inside the build: `..` or an absolute path names nothing.
    if (!file.startsWith(dir + path.sep) || !existsSync(file) || !statSync(file).isFile()) throw notFound('file', request.params['*']);
    return reply.type(CONTENT_TYPES[path.extname(file)] ?? 'application/octet-stream').header('cache-control', 'no-cache').send(createReadStream(file));
  });
}
