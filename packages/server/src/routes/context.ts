/**
 * @module Types shared by the route modules.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest, RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault } from 'fastify';
import { unauthorized } from '../http/errors.js';

/** A Fastify instance whose route schemas type `request.body`. */
export type TypedApp = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, TypeBoxTypeProvider>;

declare module 'fastify' {
  interface FastifyRequest {
    /** The API key id that made this request (set by the auth hook). */
    owner: string | null;
  }
}

/** The caller's key id; every authenticated route runs after the auth hook has set it. */
export function owner(request: FastifyRequest): string {
  if (!request.owner) throw unauthorized();
  return request.owner;
}
