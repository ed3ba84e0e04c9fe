/**
 * @module JSON request bodies: an empty body is `{}` (the official SDK sends `Content-Type:
 * application/json` with no body on DELETE and on some POSTs), and nesting is bounded, so a body
 * nested thousands of levels deep is a 400 instead of a stack overflow further down (schema
 * validation, storage, serialization all recurse).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { badRequest } from './errors.js';

/** Deepest accepted nesting of arrays and objects (Tinker bodies need fewer than ten levels). */
export const MAX_JSON_DEPTH = 64;

type DefaultParser = (request: FastifyRequest, body: string, done: (error: Error | null, value?: unknown) => void) => void;

/**
 * Replaces the app's `application/json` parser (keeping Fastify's own, with its prototype-poisoning
 * checks, for non-empty bodies).
 *
 * @example
 * const app = Fastify({ bodyLimit });
 * useJsonBodies(app, bodyLimit);
 */
export function useJsonBodies(app: FastifyInstance, bodyLimit: number): void {
  const parse = app.getDefaultJsonParser('error', 'error') as unknown as DefaultParser;
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit }, (request, body, done) => {
    const text = body as string;
    if (text.trim() === '') return done(null, {});
    parse(request, text, (error, value) => {
      if (error) return done(error, undefined);
      const tooDeep = deeperThan(value, MAX_JSON_DEPTH);
      if (tooDeep !== undefined) {
        return done(badRequest(`${tooDeep} nests deeper than ${MAX_JSON_DEPTH} levels of arrays and objects`, 'invalid_body'), undefined);
      }
      done(null, value);
    });
  });
}

/**
 * Where `value` nests arrays/objects deeper than `limit` (a field path such as
 * `user_metadata.a.a.a…`), or undefined. Iterative, so any depth is safe to check.
 */
export function deeperThan(value: unknown, limit: number): string | undefined {
  interface Node {
    value: object;
    depth: number;
    key: string;
    parent: Node | undefined;
  }
  const stack: Node[] = [];
  if (typeof value === 'object' && value !== null) stack.push({ value, depth: 1, key: '', parent: undefined });
  while (stack.length > 0) {
    const node = stack.pop()!;
    if (node.depth > limit) return fieldPath(node);
    const push = (key: string | number, child: unknown): void => {
      if (typeof child === 'object' && child !== null) stack.push({ value: child, depth: node.depth + 1, key: String(key), parent: node });
    };
    // Token and tensor arrays are long lists of numbers: look at each, allocate nothing for them.
    if (Array.isArray(node.value)) node.value.forEach((child, i) => push(i, child));
    else for (const key in node.value) push(key, (node.value as Record<string, unknown>)[key]);
  }
  return undefined;

  function fieldPath(node: Node): string {
    const keys: string[] = [];
    for (let at: Node | undefined = node; at?.parent; at = at.parent) keys.push(at.key);
    keys.reverse();
    // The first few keys name the field; the rest is the same few characters thousands of times.
    return keys.length > 6 ? `${keys.slice(0, 6).join('.')}…` : keys.join('.') || 'the body';
  }
}
