/**
 * @module store/sessions
 * SDK sessions: created by `create_session`, kept alive by heartbeats, finished explicitly or
 * expired when idle. Every owner-scoped call treats another owner's session as absent.
 */
import { randomUUID } from 'node:crypto';
import type { Kysely, Selectable, Updateable } from 'kysely';
import { affected, parseJson } from './db.js';
import type { Database, SessionsTable } from './schema.js';

/** A session as the API sees it. */
export interface SessionRow {
  sessionId: string;
  owner: string;
  tags: string[];
  userMetadata: Record<string, unknown>;
  sdkVersion: string;
  projectId: string | null;
  createdAt: number;
  lastHeartbeatAt: number;
  finishedAt: number | null;
}

/** Session storage. */
export interface SessionRepo {
  /** Creates a session with a fresh UUID v4 id, `createdAt = lastHeartbeatAt = Date.now()`. */
  create(s: { owner: string; tags: string[]; userMetadata: Record<string, unknown>; sdkVersion: string; projectId: string | null }): Promise<SessionRow>;
  /** The owner's session, or undefined (unknown or another owner's). */
  get(sessionId: string, owner: string): Promise<SessionRow | undefined>;
  /** Records a heartbeat: 'ok' (recorded), 'finished' (session already finished), 'missing' (unknown/foreign). */
  heartbeat(sessionId: string, owner: string, now: number): Promise<'ok' | 'finished' | 'missing'>;
  /** Finishes the session. True when it exists for this owner (an already-finished one keeps its original time). */
  finish(sessionId: string, owner: string, now: number): Promise<boolean>;
  /** Marks finished (at `now`) every unfinished session with `lastHeartbeatAt < idleBefore`; returns their ids. */
  expire(idleBefore: number, now: number): Promise<string[]>;
  /** The owner's sessions, newest first, and how many there are in all. */
  list(owner: string, limit: number, offset: number): Promise<{ sessions: SessionRow[]; total: number }>;
  /** Sets the session's project; false when unknown/foreign. */
  setProject(sessionId: string, owner: string, projectId: string): Promise<boolean>;
}

function toRow(r: Selectable<SessionsTable>): SessionRow {
  return {
    sessionId: r.session_id,
    owner: r.owner,
    tags: parseJson<string[]>(r.tags),
    userMetadata: parseJson<Record<string, unknown>>(r.user_metadata),
    sdkVersion: r.sdk_version,
    projectId: r.project_id,
    createdAt: Number(r.created_at),
    lastHeartbeatAt: Number(r.last_heartbeat_at),
    finishedAt: r.finished_at === null ? null : Number(r.finished_at),
  };
}

export function createSessionRepo(db: Kysely<Database>): SessionRepo {
  /** Updates the owner's session if it is not finished; whether it was. */
  const updateUnfinished = async (sessionId: string, owner: string, values: Updateable<SessionsTable>): Promise<boolean> => {
    const res = await db.updateTable('sessions').set(values).where('session_id', '=', sessionId).where('owner', '=', owner).where('finished_at', 'is', null).executeTakeFirst();
    return affected(res.numUpdatedRows) > 0;
  };
  const exists = async (sessionId: string, owner: string): Promise<boolean> =>
    (await db.selectFrom('sessions').select('session_id').where('session_id', '=', sessionId).where('owner', '=', owner).executeTakeFirst()) !== undefined;

  return {
    async create(s) {
      const now = Date.now();
      const row: Selectable<SessionsTable> = {
        session_id: randomUUID(),
        owner: s.owner,
        tags: JSON.stringify(s.tags),
        user_metadata: JSON.stringify(s.userMetadata),
        sdk_version: s.sdkVersion,
        project_id: s.projectId,
        created_at: now,
        last_heartbeat_at: now,
        finished_at: null,
      };
      await db.insertInto('sessions').values(row).execute();
      return toRow(row);
    },

    async get(sessionId, owner) {
      const r = await db.selectFrom('sessions').selectAll().where('session_id', '=', sessionId).where('owner', '=', owner).executeTakeFirst();
      return r === undefined ? undefined : toRow(r);
    },

    async heartbeat(sessionId, owner, now) {
      if (await updateUnfinished(sessionId, owner, { last_heartbeat_at: now })) return 'ok';
      return (await exists(sessionId, owner)) ? 'finished' : 'missing';
    },

    async finish(sessionId, owner, now) {
      return (await updateUnfinished(sessionId, owner, { finished_at: now })) || exists(sessionId, owner);
    },

    async expire(idleBefore, now) {
      // One statement: a session heartbeating concurrently either lands before (and is spared)
      // or after (and gets 'finished').
      const rows = await db
        .updateTable('sessions')
        .set({ finished_at: now })
        .where('finished_at', 'is', null)
        .where('last_heartbeat_at', '<', idleBefore)
        .returning('session_id')
        .execute();
      return rows.map((r) => r.session_id);
    },

    async list(owner, limit, offset) {
      const [rows, count] = await Promise.all([
        db
          .selectFrom('sessions')
          .selectAll()
          .where('owner', '=', owner)
          .orderBy('created_at', 'desc')
          .orderBy('session_id', 'desc')
          .limit(limit)
          .offset(offset)
          .execute(),
        db.selectFrom('sessions').select((eb) => eb.fn.countAll<number>().as('n')).where('owner', '=', owner).executeTakeFirstOrThrow(),
      ]);
      return { sessions: rows.map(toRow), total: Number(count.n) };
    },

    async setProject(sessionId, owner, projectId) {
      const res = await db.updateTable('sessions').set({ project_id: projectId }).where('session_id', '=', sessionId).where('owner', '=', owner).executeTakeFirst();
      return affected(res.numUpdatedRows) > 0;
    },
  };
}
