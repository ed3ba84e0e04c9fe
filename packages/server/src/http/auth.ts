/**
 * @module API-key authentication: `X-API-Key: tml-...` on every `/api/v1` route except the health
 * check and signed archive downloads. Lookups are cached for at most a second, so heartbeats and
 * long polls do not each cost a database query, while a key revoked in the database (by `lathe keys
 * revoke`, from any process) stops working on every server within a second.
 */
import type { FastifyRequest } from 'fastify';
import type { KeyRepo } from '../store/index.js';
import { unauthorized } from './errors.js';

/** How long a successful lookup is trusted: the longest a revoked key keeps working. */
export const AUTH_CACHE_MS = 1000;

/** Routes that carry their own authorisation (or need none). */
const PUBLIC_PREFIXES = ['/api/v1/healthz', '/api/v1/checkpoint_archives/', '/api/v1/checkpoint_files/', '/openapi.json'];

/**
 * Builds the `onRequest` hook that sets `request.owner`. `now` is the cache's clock.
 *
 * @example
 * app.addHook('onRequest', apiKeyAuth(store.keys));
 */
export function apiKeyAuth(keys: KeyRepo, now: () => number = Date.now): (request: FastifyRequest) => Promise<void> {
  const cache = new Map<string, { owner: string; until: number }>();
  return async (request) => {
    request.owner = null;
    if (PUBLIC_PREFIXES.some((prefix) => request.url.startsWith(prefix)) || !request.url.startsWith('/api/')) return;
    const header = request.headers['x-api-key'];
    const key = Array.isArray(header) ? header[0] : header;
    if (!key) throw unauthorized();
    const at = now();
    const hit = cache.get(key);
    if (hit && hit.until > at) {
      request.owner = hit.owner;
      return;
    }
    const found = await keys.authenticate(key);
    if (!found) throw unauthorized('invalid API key');
    if (cache.size > 10_000) cache.clear();
    cache.set(key, { owner: found.id, until: at + AUTH_CACHE_MS });
    request.owner = found.id;
  };
}
