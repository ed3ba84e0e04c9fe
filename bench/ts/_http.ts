/**
 * @module Shared by the control-plane benchmarks: raw HTTP on a keep-alive agent, JSON replies,
 * quantiles.
 */
import http from 'node:http';
import type { LatheServer } from '../../packages/server/src/app.js';

/** A finished HTTP reply. */
export interface Reply {
  status: number;
  contentType: string;
  body: Buffer;
}

/** POSTs `body` to 127.0.0.1:`port``urlPath` with the API key. */
export function request(agent: http.Agent, port: number, apiKey: string, urlPath: string, body: Uint8Array | string, headers: Record<string, string>): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const payload = typeof body === 'string' ? Buffer.from(body) : body;
    const req = http.request(
      { host: '127.0.0.1', port, method: 'POST', path: urlPath, agent, headers: { 'x-api-key': apiKey, 'content-length': String(payload.byteLength), ...headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * Starts `server` listening on 127.0.0.1 at a free port and returns the port.
 *
 * @example
 * const port = await listenOnFreePort(server);
 */
export async function listenOnFreePort(server: LatheServer): Promise<number> {
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const address = server.app.server.address();
  if (address === null || typeof address === 'string') throw new Error('server has no TCP address');
  return address.port;
}

/** The JSON body of a 200 reply, or an error naming `what`. */
export function jsonOf(reply: Reply, what: string): Record<string, unknown> {
  if (reply.status !== 200) throw new Error(`${what}: HTTP ${reply.status} ${reply.body.toString()}`);
  return JSON.parse(reply.body.toString()) as Record<string, unknown>;
}

/** The q-quantile of an ascending array, linearly interpolated. */
export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

/**
 * Runs a benchmark's `main` and exits with its code (1, with the error printed, if it throws).
 *
 * @example
 * runBench(main);
 */
export function runBench(main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
