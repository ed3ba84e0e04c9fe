/**
 * @module API-key authentication: `X-API-Key: tml-...` on every `/api/v1` route except the health
 * check and signed archive downloads. Lookups are cached briefly, so heartbeats and long polls do
 * not each cost a database query.
 */
import type { FastifyRequest } from 'fastify';
import type { KeyRepo } from '../store/index.js';
import { unauthorized } from './errors.js';

const CACHE_MS = 30_000;

/** Routes that carry their own authorisation (or need none). */
const PUBLIC_PREFIXES = ['/api/v1/healthz', '/api/v1/checkpoint_archives/', '/openapi.json'];

/**
 * Builds the `onRequest` hook that sets `request.owner`.
 *
 * @example
 * app.addHook('onRequest', apiKeyAuth(store.keys));
 */
export function apiKeyAuth(keys: KeyRepo): (request: FastifyRequest) => Promise<void> {
  const cache = new Map<string, { owner: string; until: number }>();
  return async (request) => {
    request.owner = null;
    if (PUBLIC_PREFIXES.some((prefix) => request.url.startsWith(prefix)) || !request.url.startsWith('/api/')) return;
    const header = request.headers['x-api-key'];
    const key = Array.isArray(header) ? header[0] : header;
    if (!key) throw unauthorized();
    const now = Date.now();
    const hit = cache.get(key);
    if (hit && hit.until > now) {
      request.owner = hit.owner;
      return;
    }
    const found = await keys.authenticate(key);
    if (!found) throw unauthorized('invalid API key');
    if (cache.size > 10_000) cache.clear();
    cache.set(key, { owner: found.id, until: now + CACHE_MS });
    request.owner = found.id;
  };
}
