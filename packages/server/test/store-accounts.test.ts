/**
 * Store tests: keys, sessions, migrations and persistence; SQLite locking. Every test runs on SQLite and, with `LATHE_TEST_DATABASE_URL`, on
 * PostgreSQL (fixtures/store-lanes.ts).
 *
 *   scripts/with-postgres.sh node --conditions=lathe-source --import tsx --test packages/server/test/store-accounts.test.ts
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { sql } from 'kysely';
import SqliteDatabase from 'better-sqlite3';
import { hashKey, MIGRATIONS, openStore } from '../src/store/index.js';
import { checkpoint, newRun, newSession, sleep, storeLanes, withStore } from './fixtures/store-lanes.js';

for (const lane of storeLanes()) {
  const it = (name: string, fn: () => Promise<void>) => test(`[${lane.name}] ${name}`, { skip: lane.skip }, fn);

  describe(`store (${lane.name})`, () => {
    it('migrations are idempotent (open twice, and twice concurrently)', async () => {
      const url = await lane.fresh();
      const first = await openStore(url);
      assert.equal(first.dialect, lane.name);
      const rows = await first.db.selectFrom('schema_migrations').selectAll().orderBy('version').execute();
      assert.deepEqual(rows.map((r) => r.version), MIGRATIONS.map((m) => m.version));
      await first.keys.create('k');
      await first.close();
      await first.close(); // closing twice is harmless

      // Concurrent opens of a migrated database. (Concurrent first-time migrations are covered
      // for PostgreSQL below; two SQLite stores on one file in one process are not a supported
      // setup, since better-sqlite3 blocks the event loop while waiting for a lock.)
      const [a, b] = await Promise.all([openStore(url), openStore(url)]);
      try {
        assert.equal((await a.db.selectFrom('schema_migrations').selectAll().execute()).length, MIGRATIONS.length);
        assert.equal((await b.keys.list()).length, 1);
      } finally {
        await a.close();
        await b.close();
      }
      const again = await openStore(url);
      assert.equal((await again.keys.list()).length, 1);
      await again.close();

      if (lane.name === 'postgres') {
        const fresh = await lane.fresh();
        const stores = await Promise.all(Array.from({ length: 4 }, () => openStore(fresh)));
        try {
          const versions = await stores[0]?.db.selectFrom('schema_migrations').select('version').execute();
          assert.equal(versions?.length, MIGRATIONS.length);
        } finally {
          for (const s of stores) await s.close();
        }
      }
    });

    it('keys: create, authenticate, list, revoke; only the hash is stored', async () => {
      await withStore(lane, async (store) => {
        const before = Date.now();
        const k = await store.keys.create('alice');
        const after = Date.now();
        assert.match(k.key, /^tml-[A-Za-z0-9_-]{32}$/);
        assert.equal(k.name, 'alice');
        assert.ok(k.id.length > 0 && k.id.length <= 16);
        assert.ok(before <= k.createdAt && k.createdAt <= after, `created at ${k.createdAt}, called between ${before} and ${after}`);
        const other = await store.keys.create('bob');
        assert.notEqual(other.id, k.id);
        assert.notEqual(other.key, k.key);

        assert.deepEqual(await store.keys.authenticate(k.key), { id: k.id, name: 'alice' });
        assert.equal(await store.keys.authenticate(k.key + 'x'), undefined);
        assert.equal(await store.keys.authenticate(''), undefined);

        const raw = await store.db.selectFrom('api_keys').selectAll().where('id', '=', k.id).executeTakeFirstOrThrow();
        assert.equal(raw.key_hash, hashKey(k.key));
        assert.match(raw.key_hash, /^[0-9a-f]{64}$/);
        // Only the key's first 8 random characters are kept in clear, to tell keys apart in listings.
        assert.equal(raw.prefix, k.key.slice(4, 12));
        assert.equal((await store.keys.list()).find((x) => x.id === k.id)?.prefix, k.key.slice(0, 12));
        for (const row of await store.db.selectFrom('api_keys').selectAll().execute()) {
          for (const value of Object.values(row)) assert.ok(!String(value).includes('tml-'), 'no column holds a key');
        }

        let list = await store.keys.list();
        const byId = (x: { id: string }, y: { id: string }) => (x.id < y.id ? -1 : 1);
        assert.deepEqual(list.map((x) => ({ id: x.id, name: x.name, revokedAt: x.revokedAt })).sort(byId), [{ id: k.id, name: 'alice', revokedAt: null }, { id: other.id, name: 'bob', revokedAt: null }].sort(byId));

        assert.equal(await store.keys.revoke(k.id), true);
        assert.equal(await store.keys.revoke(k.id), false);
        assert.equal(await store.keys.revoke('nope'), false);
        assert.equal(await store.keys.authenticate(k.key), undefined);
        assert.deepEqual(await store.keys.authenticate(other.key), { id: other.id, name: 'bob' });
        list = await store.keys.list();
        assert.equal(typeof list.find((x) => x.id === k.id)?.revokedAt, 'number');
        assert.equal(list.find((x) => x.id === other.id)?.revokedAt, null);
      });
    });

    it('sessions: create/get, owner isolation, heartbeat, finish, project', async () => {
      await withStore(lane, async (store) => {
        const s = await store.sessions.create({ owner: 'alice', tags: ['a', 'b'], userMetadata: { x: 1, nested: { y: [1, 2] } }, sdkVersion: '0.25.0', projectId: null });
        assert.match(s.sessionId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
        assert.equal(s.lastHeartbeatAt, s.createdAt);
        assert.equal(s.finishedAt, null);
        assert.deepEqual(await store.sessions.get(s.sessionId, 'alice'), s);
        assert.deepEqual((await store.sessions.get(s.sessionId, 'alice'))?.userMetadata, { x: 1, nested: { y: [1, 2] } });
        assert.equal(await store.sessions.get(s.sessionId, 'bob'), undefined);
        assert.equal(await store.sessions.get('missing', 'alice'), undefined);

        assert.equal(await store.sessions.heartbeat(s.sessionId, 'alice', s.createdAt + 500), 'ok');
        assert.equal((await store.sessions.get(s.sessionId, 'alice'))?.lastHeartbeatAt, s.createdAt + 500);
        assert.equal(await store.sessions.heartbeat(s.sessionId, 'bob', s.createdAt + 600), 'missing');
        assert.equal(await store.sessions.heartbeat('missing', 'alice', s.createdAt + 600), 'missing');

        assert.equal(await store.sessions.setProject(s.sessionId, 'bob', 'p'), false);
        assert.equal(await store.sessions.setProject(s.sessionId, 'alice', 'proj-1'), true);
        assert.equal((await store.sessions.get(s.sessionId, 'alice'))?.projectId, 'proj-1');

        assert.equal(await store.sessions.finish(s.sessionId, 'bob', 1000), false);
        assert.equal(await store.sessions.finish('missing', 'alice', 1000), false);
        assert.equal(await store.sessions.finish(s.sessionId, 'alice', s.createdAt + 700), true);
        assert.equal(await store.sessions.finish(s.sessionId, 'alice', s.createdAt + 900), true, 'finishing twice is fine');
        assert.equal((await store.sessions.get(s.sessionId, 'alice'))?.finishedAt, s.createdAt + 700);
        assert.equal(await store.sessions.heartbeat(s.sessionId, 'alice', s.createdAt + 800), 'finished');
        assert.equal((await store.sessions.get(s.sessionId, 'alice'))?.lastHeartbeatAt, s.createdAt + 500);
      });
    });

    it('sessions: expire idle sessions', async () => {
      await withStore(lane, async (store) => {
        const [a, b, c, d] = [await newSession(store, 'alice'), await newSession(store, 'alice'), await newSession(store, 'bob'), await newSession(store, 'bob')];
        const t = Date.now() + 10_000;
        await store.sessions.heartbeat(a, 'alice', t);
        await store.sessions.heartbeat(b, 'alice', t + 100);
        await store.sessions.heartbeat(c, 'bob', t + 50);
        await store.sessions.heartbeat(d, 'bob', t + 10);
        await store.sessions.finish(d, 'bob', t + 20);

        const expired = await store.sessions.expire(t + 60, t + 1000);
        assert.deepEqual([...expired].sort(), [a, c].sort(), 'idle and unfinished only (d was already finished)');
        assert.equal((await store.sessions.get(a, 'alice'))?.finishedAt, t + 1000);
        assert.equal((await store.sessions.get(c, 'bob'))?.finishedAt, t + 1000);
        assert.equal((await store.sessions.get(b, 'alice'))?.finishedAt, null);
        assert.equal((await store.sessions.get(d, 'bob'))?.finishedAt, t + 20);
        assert.equal(await store.sessions.heartbeat(a, 'alice', t + 2000), 'finished');
        assert.deepEqual(await store.sessions.expire(t + 60, t + 3000), []);
        assert.deepEqual(await store.sessions.expire(t + 101, t + 3000), [b]);
      });
    });

    it('sessions: list newest first with paging and totals', async () => {
      await withStore(lane, async (store) => {
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) {
          ids.push(await newSession(store, 'alice'));
          await sleep(3); // distinct creation times
        }
        await newSession(store, 'bob');
        const newest = [...ids].reverse();
        const all = await store.sessions.list('alice', 100, 0);
        assert.equal(all.total, 5);
        assert.deepEqual(all.sessions.map((s) => s.sessionId), newest);
        const p1 = await store.sessions.list('alice', 2, 0);
        const p2 = await store.sessions.list('alice', 2, 2);
        const p3 = await store.sessions.list('alice', 2, 4);
        assert.deepEqual([p1.total, p2.total, p3.total], [5, 5, 5]);
        assert.deepEqual([...p1.sessions, ...p2.sessions, ...p3.sessions].map((s) => s.sessionId), newest);
        assert.deepEqual(await store.sessions.list('alice', 2, 10), { sessions: [], total: 5 });
        assert.deepEqual(await store.sessions.list('carol', 10, 0), { sessions: [], total: 0 });
        assert.equal((await store.sessions.list('bob', 10, 0)).total, 1);
      });
    });

    it('data persists across close and reopen', async () => {
      const url = await lane.fresh();
      let store = await openStore(url);
      const key = await store.keys.create('persist');
      const sid = await newSession(store, 'alice');
      const run = await newRun(store, 'alice', sid, 0, 42);
      const bytes = Uint8Array.from({ length: 256 }, (_, i) => 255 - i);
      const req = (await store.requests.insert({ owner: 'alice', target: run.modelId, seqId: 1, kind: 'forward', payload: bytes, now: 43 })).row;
      await store.checkpoints.put(checkpoint(run.modelId, 'alice', 'final', 44));
      await store.close();

      store = await openStore(url);
      try {
        assert.deepEqual(await store.keys.authenticate(key.key), { id: key.id, name: 'persist' });
        assert.equal((await store.sessions.get(sid, 'alice'))?.sessionId, sid);
        assert.deepEqual(await store.runs.get(run.modelId, 'alice'), run);
        assert.deepEqual((await store.requests.get(req.requestId, 'alice'))?.payload, bytes);
        assert.deepEqual((await store.requests.unfinished()).map((r) => r.requestId), [req.requestId]);
        assert.equal((await store.checkpoints.get(run.modelId, 'weights/final', 'alice'))?.createdAt, 44);
      } finally {
        await store.close();
      }
    });

    if (lane.name === 'sqlite') {
      it('sqlite: WAL journal, foreign keys on, no synchronous busy wait', async () => {
        await withStore(lane, async (store) => {
          const journal = await sql<{ journal_mode: string }>`pragma journal_mode`.execute(store.db);
          assert.equal(journal.rows[0]?.journal_mode, 'wal');
          const fk = await sql<{ foreign_keys: number }>`pragma foreign_keys`.execute(store.db);
          assert.equal(fk.rows[0]?.foreign_keys, 1);
          // SQLite's own busy wait would block the event loop; the driver waits asynchronously instead.
          const busy = await sql<{ timeout: number }>`pragma busy_timeout`.execute(store.db);
          assert.equal(busy.rows[0]?.timeout, 0);
        });
        const mem = await openStore(':memory:');
        assert.equal((await mem.keys.list()).length, 0);
        await mem.close();
      });

      it('sqlite: while another process holds the write lock, reads and timers go on and a write waits for the lock', async () => {
        await withStore(lane, async (store, url) => {
          const created = await store.keys.create('before');
          const other = new SqliteDatabase(url);
          other.exec('BEGIN EXCLUSIVE');
          let written = false;
          const write = store.keys.create('during').then((key) => {
            written = true;
            return key;
          });
          try {
            // The event loop is free (a timer fires), and reads answer under WAL, while the write waits.
            await new Promise((resolve) => setTimeout(resolve, 20));
            assert.deepEqual(await store.keys.authenticate(created.key), { id: created.id, name: 'before' });
            assert.equal(written, false);
          } finally {
            other.exec('COMMIT');
            other.close();
          }
          const during = await write;
          assert.deepEqual(await store.keys.authenticate(during.key), { id: during.id, name: 'during' });
        });
      });

      it('sqlite: a transaction waits for the lock asynchronously and other statements never land inside it', async () => {
        await withStore(lane, async (store, url) => {
          const other = new SqliteDatabase(url);
          other.exec('BEGIN EXCLUSIVE');
          let inside!: () => void;
          const entered = new Promise<void>((resolve) => (inside = resolve));
          let leave!: () => void;
          const gate = new Promise<void>((resolve) => (leave = resolve));
          const transaction = store.db.transaction().execute(async (tx) => {
            await tx.insertInto('api_keys').values({ id: 'k1', name: 'in-tx', key_hash: 'h1', created_at: 1, revoked_at: null }).execute();
            inside();
            await gate;
            throw new Error('roll back');
          });
          try {
            // BEGIN waits for the other process without holding anything: reads go on.
            assert.equal((await store.keys.list()).length, 0);
          } finally {
            other.exec('COMMIT');
            other.close();
          }
          await entered;
          // Sent while the transaction is open: it must wait for it, not run inside it.
          const outside = store.keys.create('outside');
          leave();
          await assert.rejects(transaction, /roll back/);
          await outside;
          assert.deepEqual((await store.keys.list()).map((k) => k.name), ['outside']);
        });
      });
    }
  });
}
