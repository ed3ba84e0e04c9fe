/**
 * Store tests. Every test runs against SQLite (a fresh temp file per test) and, when
 * `LATHE_TEST_DATABASE_URL` is set, against that PostgreSQL (a fresh schema per test, dropped at
 * the end). Without the variable the PostgreSQL tests are reported as skipped, unless `CI` is
 * set, in which case an extra test fails so CI can never silently skip the lane.
 *
 *   scripts/with-postgres.sh node --conditions=lathe-source --import tsx --test packages/server/test/store.test.ts
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { sql } from 'kysely';
import SqliteDatabase from 'better-sqlite3';
import pg from 'pg';
import { hashKey, MIGRATIONS, openStore, StoreConflictError, type RunRow, type Store } from '../src/store/index.js';

const PG_URL = process.env['LATHE_TEST_DATABASE_URL'];
const CI = process.env['CI'] !== undefined && !['', '0', 'false'].includes(process.env['CI'].toLowerCase());

interface Lane {
  name: 'sqlite' | 'postgres';
  /** False, or why this lane's tests are skipped. */
  skip: string | false;
  /** A URL of a fresh, empty database. */
  fresh(): Promise<string>;
  cleanup(): Promise<void>;
}

function sqliteLane(): Lane {
  const dir = mkdtempSync(join(tmpdir(), 'lathe-store-'));
  let n = 0;
  return {
    name: 'sqlite',
    skip: false,
    fresh: async () => join(dir, `db${++n}`, 'lathe.db'),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
}

function postgresLane(): Lane {
  if (PG_URL === undefined || PG_URL === '') {
    return { name: 'postgres', skip: 'LATHE_TEST_DATABASE_URL is not set', fresh: () => Promise.reject(new Error('no PG')), cleanup: async () => {} };
  }
  const base = PG_URL;
  const run = `lathe_test_${process.pid}_${randomBytes(3).toString('hex')}`;
  const schemas: string[] = [];
  let admin: pg.Client | undefined;
  return {
    name: 'postgres',
    skip: false,
    async fresh() {
      if (admin === undefined) {
        admin = new pg.Client({ connectionString: base });
        await admin.connect();
      }
      const schema = `${run}_${schemas.length + 1}`;
      await admin.query(`CREATE SCHEMA ${schema}`);
      schemas.push(schema);
      const url = new URL(base);
      url.searchParams.set('options', `-c search_path=${schema}`);
      return url.toString();
    },
    async cleanup() {
      if (admin === undefined) return;
      for (const s of schemas) await admin.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
      await admin.end();
    },
  };
}

const lanes: Lane[] = [sqliteLane(), postgresLane()];

after(async () => {
  for (const lane of lanes) await lane.cleanup();
});

if (lanes[1]?.skip !== false) {
  const note = 'NOTE: LATHE_TEST_DATABASE_URL is not set, so the PostgreSQL store tests did not run (use scripts/with-postgres.sh).';
  console.log(note);
  if (CI) {
    test('postgres lane is required when CI is set', () => {
      assert.fail(`${note} CI is set, so this counts as a failure.`);
    });
  }
}

/** Opens a store on a fresh database, runs `fn`, closes it. */
async function withStore(lane: Lane, fn: (store: Store, url: string) => Promise<void>): Promise<void> {
  const url = await lane.fresh();
  const store = await openStore(url);
  try {
    await fn(store, url);
  } finally {
    await store.close();
  }
}

const LORA = { rank: 8, seed: null, trainAttn: true, trainMlp: true, trainUnembed: false };

async function newSession(store: Store, owner: string): Promise<string> {
  return (await store.sessions.create({ owner, tags: [], userMetadata: {}, sdkVersion: '0.25.0', projectId: null })).sessionId;
}

async function newRun(store: Store, owner: string, sessionId: string, n: number, now: number): Promise<RunRow> {
  return store.runs.create({ modelId: `${sessionId}:train:${n}`, owner, sessionId, baseModel: 'Qwen/Qwen3-0.6B', loraRank: 8, loraConfig: LORA, userMetadata: {}, now });
}

function checkpoint(modelId: string, owner: string, name: string, now: number, extra: { ephemeral?: boolean; expiresAt?: number | null; sampler?: boolean } = {}) {
  const kind = extra.sampler === true ? 'sampler_weights' : 'weights';
  return {
    modelId,
    checkpointId: `${kind}/${name}`,
    owner,
    checkpointType: extra.sampler === true ? ('sampler' as const) : ('training' as const),
    tinkerPath: `tinker://${modelId}/${kind}/${name}`,
    storagePath: `/data/${modelId}/${kind}/${name}`,
    sizeBytes: 1234,
    expiresAt: extra.expiresAt ?? null,
    ephemeral: extra.ephemeral ?? false,
    now,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const lane of lanes) {
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

    it('runs: idempotent create, owner isolation, listing, touch/state/corrupted', async () => {
      await withStore(lane, async (store) => {
        const sid = await newSession(store, 'alice');
        const run = await store.runs.create({
          modelId: `${sid}:train:0`,
          owner: 'alice',
          sessionId: sid,
          baseModel: 'Qwen/Qwen3-8B',
          loraRank: 32,
          loraConfig: { rank: 32, seed: 7, trainAttn: true, trainMlp: false, trainUnembed: true },
          userMetadata: { purpose: 'test' },
          now: 1000,
        });
        const expected: RunRow = {
          modelId: `${sid}:train:0`,
          owner: 'alice',
          sessionId: sid,
          baseModel: 'Qwen/Qwen3-8B',
          loraRank: 32,
          loraConfig: { rank: 32, seed: 7, trainAttn: true, trainMlp: false, trainUnembed: true },
          userMetadata: { purpose: 'test' },
          createdAt: 1000,
          lastRequestAt: 1000,
          corrupted: false,
          state: 'creating',
          optimizerConfig: { type: 'adamw' },
          serverId: null,
        };
        assert.deepEqual(run, expected);
        // A run's optimizer and initial state are kept as given.
        const { serverId: _serverId, ...runFields } = run; // create takes a server id or none, not null
        const otherSid = await newSession(store, 'dave');
        const dimuon = await store.runs.create({ ...runFields, owner: 'dave', sessionId: otherSid, modelId: `${otherSid}:train:0`, optimizerConfig: { type: 'dimuon', version: 1 }, state: 'unloaded', now: 1100 });
        assert.deepEqual([dimuon.optimizerConfig, dimuon.state], [{ type: 'dimuon', version: 1 }, 'unloaded']);
        assert.deepEqual((await store.runs.get(dimuon.modelId, 'dave'))?.optimizerConfig, { type: 'dimuon', version: 1 });
        // Duplicate model id: the original row, unchanged.
        const again = await store.runs.create({ ...runFields, baseModel: 'other', loraRank: 1, now: 5000 });
        assert.deepEqual(again, run);
        await assert.rejects(store.runs.create({ ...runFields, owner: 'mallory', now: 6000 }), StoreConflictError);
        await assert.rejects(newRun(store, 'alice', 'no-such-session', 0, 1), 'the session must exist');

        assert.deepEqual(await store.runs.get(run.modelId, 'alice'), run);
        assert.equal(await store.runs.get(run.modelId, 'bob'), undefined);
        assert.equal(await store.runs.get('nope', 'alice'), undefined);

        await store.runs.touch(run.modelId, 3000);
        await store.runs.touch(run.modelId, 2000); // never backwards
        await store.runs.setState(run.modelId, 'ready');
        await store.runs.markCorrupted(run.modelId);
        const after = await store.runs.get(run.modelId, 'alice');
        assert.equal(after?.lastRequestAt, 3000);
        assert.equal(after?.state, 'ready');
        assert.equal(after?.corrupted, true);

        const runs = [run];
        for (let i = 1; i < 5; i++) runs.push(await newRun(store, 'alice', sid, i, 1000 + i * 10));
        const bobSid = await newSession(store, 'bob');
        await newRun(store, 'bob', bobSid, 0, 99_999);
        const newest = runs.map((r) => r.modelId).reverse();
        const all = await store.runs.list('alice', 50, 0);
        assert.equal(all.total, 5);
        assert.deepEqual(all.runs.map((r) => r.modelId), newest);
        const p2 = await store.runs.list('alice', 2, 2);
        assert.equal(p2.total, 5);
        assert.deepEqual(p2.runs.map((r) => r.modelId), newest.slice(2, 4));
        assert.deepEqual(await store.runs.list('carol', 10, 0), { runs: [], total: 0 });
        assert.deepEqual(await store.runs.listForSession(sid), runs.map((r) => r.modelId));
        assert.deepEqual(await store.runs.listForSession(bobSid), [`${bobSid}:train:0`]);
        assert.deepEqual(await store.runs.listForSession('nope'), []);
      });
    });

    it('samplers: idempotent create, owner isolation, listForSession', async () => {
      await withStore(lane, async (store) => {
        const sid = await newSession(store, 'alice');
        const s0 = await store.samplers.create({ samplerId: `${sid}:sample:0`, owner: 'alice', sessionId: sid, baseModel: 'Qwen/Qwen3-8B', modelPath: null, now: 10 });
        assert.deepEqual(s0, { samplerId: `${sid}:sample:0`, owner: 'alice', sessionId: sid, baseModel: 'Qwen/Qwen3-8B', modelPath: null, createdAt: 10 });
        assert.deepEqual(await store.samplers.create({ ...s0, modelPath: 'tinker://x/sampler_weights/y', now: 99 }), s0);
        await assert.rejects(store.samplers.create({ ...s0, owner: 'bob', now: 99 }), StoreConflictError);
        const s1 = await store.samplers.create({ samplerId: `${sid}:sample:1`, owner: 'alice', sessionId: sid, baseModel: 'Qwen/Qwen3-8B', modelPath: 'tinker://m/sampler_weights/a', now: 20 });
        assert.equal(s1.modelPath, 'tinker://m/sampler_weights/a');
        assert.deepEqual(await store.samplers.get(s1.samplerId, 'alice'), s1);
        assert.equal(await store.samplers.get(s1.samplerId, 'bob'), undefined);
        assert.deepEqual(await store.samplers.listForSession(sid), [s0.samplerId, s1.samplerId]);
        assert.deepEqual(await store.samplers.listForSession('nope'), []);
      });
    });

    it('samplers: joinClient hands out 1, 2, … per sampler, atomically, to its owner only', async () => {
      await withStore(lane, async (store) => {
        const sid = await newSession(store, 'alice');
        const s = await store.samplers.create({ samplerId: `${sid}:sample:0`, owner: 'alice', sessionId: sid, baseModel: 'Qwen/Qwen3-8B', modelPath: null, now: 10 });
        assert.equal(await store.samplers.joinClient(s.samplerId, 'alice'), 1);
        const concurrent = await Promise.all(Array.from({ length: 10 }, () => store.samplers.joinClient(s.samplerId, 'alice')));
        assert.deepEqual([...concurrent].sort((a, b) => a! - b!), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert.equal(await store.samplers.joinClient(s.samplerId, 'bob'), undefined);
        assert.equal(await store.samplers.joinClient('nope', 'alice'), undefined);
        assert.deepEqual(await store.samplers.get(s.samplerId, 'alice'), s);
      });
    });

    it('requests: finishedIn lists one seq block of a target, finished only, in completion order', async () => {
      await withStore(lane, async (store) => {
        const add = async (seqId: number | null) => (await store.requests.insert({ owner: 'alice', target: 's', seqId, kind: 'sample', payload: null, now: 1 })).row.requestId;
        const [a, b, c, d, e] = [await add(0), await add(1), await add(2_000_000_000), await add(null), await add(3)];
        await store.requests.complete(b!, new Uint8Array([1]), 10);
        await store.requests.fail(a!, { message: 'x', category: 'user' }, 20);
        await store.requests.complete(c!, new Uint8Array([1]), 30);
        await store.requests.complete(d!, new Uint8Array([1]), 40);
        await store.requests.insert({ owner: 'alice', target: 'other', seqId: 5, kind: 'sample', payload: null, now: 1 });
        assert.deepEqual(await store.requests.finishedIn('s', 0, 1_000_000_000), [
          { requestId: b, status: 'complete' },
          { requestId: a, status: 'failed' },
          { requestId: d, status: 'complete' },
        ]);
        assert.deepEqual(await store.requests.finishedIn('s', 2_000_000_000, 3_000_000_000), [{ requestId: c, status: 'complete' }]);
        assert.ok(e);
        assert.deepEqual(await store.requests.finishedIn('nope', 0, 1_000_000_000), []);
      });
    });

    it('requests: insert dedupes (target, seqId); null seq ids never collide', async () => {
      await withStore(lane, async (store) => {
        const a = await store.requests.insert({ owner: 'alice', target: 'm1', seqId: 1, kind: 'forward_backward', payload: new Uint8Array([1, 2]), now: 100 });
        assert.equal(a.created, true);
        assert.equal(a.row.status, 'pending');
        assert.equal(a.row.seqId, 1);
        assert.equal(a.row.createdAt, 100);
        assert.equal(a.row.completedAt, null);
        const dup = await store.requests.insert({ owner: 'alice', target: 'm1', seqId: 1, kind: 'optim_step', payload: null, now: 200 });
        assert.equal(dup.created, false);
        assert.deepEqual(dup.row, a.row, 'the original row, not the resubmitted one');
        const otherTarget = await store.requests.insert({ owner: 'alice', target: 'm2', seqId: 1, kind: 'forward', payload: null, now: 200 });
        assert.equal(otherTarget.created, true);
        assert.notEqual(otherTarget.row.requestId, a.row.requestId);
        const n1 = await store.requests.insert({ owner: 'alice', target: 'm1', seqId: null, kind: 'save_weights', payload: null, now: 300 });
        const n2 = await store.requests.insert({ owner: 'alice', target: 'm1', seqId: null, kind: 'save_weights', payload: null, now: 300 });
        assert.equal(n1.created && n2.created, true);
        assert.notEqual(n1.row.requestId, n2.row.requestId);
        assert.equal(n1.row.seqId, null);
        await assert.rejects(store.requests.insert({ owner: 'bob', target: 'm1', seqId: 1, kind: 'x', payload: null, now: 1 }), StoreConflictError);
        // A large sampling seq id (unpickled clients start at k * 1e9) survives.
        const big = 123_456_789 * 1_000_000 + 7;
        const b = await store.requests.insert({ owner: 'alice', target: 's1', seqId: big, kind: 'sample', payload: null, now: 1 });
        assert.equal(b.row.seqId, big);
        assert.equal((await store.requests.insert({ owner: 'alice', target: 's1', seqId: big, kind: 'sample', payload: null, now: 2 })).row.requestId, b.row.requestId);
        assert.equal((await store.requests.get(b.row.requestId, 'alice'))?.seqId, big);

        assert.deepEqual(await store.requests.get(a.row.requestId, 'alice'), a.row);
        assert.equal(await store.requests.get(a.row.requestId, 'bob'), undefined);
        assert.equal(await store.requests.get('req_nope', 'alice'), undefined);
      });
    });

    it('requests: 20 concurrent inserts of one (target, seq) yield one row', async () => {
      await withStore(lane, async (store) => {
        for (let round = 0; round < 3; round++) {
          const results = await Promise.all(
            Array.from({ length: 20 }, (_, i) => store.requests.insert({ owner: 'alice', target: 'model-c', seqId: round, kind: 'forward_backward', payload: new Uint8Array([i]), now: 1000 + i })),
          );
          assert.equal(results.filter((r) => r.created).length, 1, 'exactly one insert wins');
          assert.equal(new Set(results.map((r) => r.row.requestId)).size, 1, 'everyone gets the same request id');
          const winner = results.find((r) => r.created);
          for (const r of results) assert.deepEqual(r.row, winner?.row);
        }
        const count = await store.db.selectFrom('requests').select((eb) => eb.fn.countAll<number>().as('n')).where('target', '=', 'model-c').executeTakeFirstOrThrow();
        assert.equal(Number(count.n), 3);
      });
    });

    it('server ownership: runs and requests carry their server; unowned rows are adopted once, all by one server', async () => {
      await withStore(lane, async (store) => {
        const sid = await newSession(store, 'alice');
        const legacyRun = await newRun(store, 'alice', sid, 0, 100);
        const owned = await store.runs.create({ modelId: `${sid}:train:1`, owner: 'alice', sessionId: sid, baseModel: 'm', loraRank: 8, loraConfig: LORA, userMetadata: {}, now: 100, serverId: 'server-a' });
        assert.deepEqual([legacyRun.serverId, owned.serverId], [null, 'server-a']);
        const legacy = (await store.requests.insert({ owner: 'alice', target: legacyRun.modelId, seqId: 0, kind: 'k', payload: null, now: 1 })).row;
        const mine = (await store.requests.insert({ owner: 'alice', target: owned.modelId, seqId: 0, kind: 'k', payload: null, now: 2, serverId: 'server-a' })).row;
        const theirs = (await store.requests.insert({ owner: 'alice', target: 's', seqId: 0, kind: 'sample', payload: null, now: 3, serverId: 'server-b' })).row;
        assert.deepEqual((await store.requests.unfinished('server-a')).map((r) => r.requestId), [mine.requestId]);
        // Two servers adopting at once: one takes every unowned row (a run and a request), the other none.
        const taken = await Promise.all([store.adoptUnowned('server-a'), store.adoptUnowned('server-b')]);
        assert.deepEqual([...taken].sort(), [0, 2]);
        const winner = taken[0] === 2 ? 'server-a' : 'server-b';
        assert.equal((await store.runs.get(legacyRun.modelId, 'alice'))?.serverId, winner);
        assert.ok((await store.requests.unfinished(winner)).some((r) => r.requestId === legacy.requestId));
        assert.deepEqual((await store.requests.unfinished('server-b')).map((r) => r.requestId), winner === 'server-b' ? [legacy.requestId, theirs.requestId] : [theirs.requestId]);
        assert.equal(await store.adoptUnowned('server-c'), 0);
      });
    });

    it('requests: running/complete/fail, unfinished, prune; payloads are binary-safe', async () => {
      await withStore(lane, async (store) => {
        const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
        const r1 = (await store.requests.insert({ owner: 'o', target: 't', seqId: 1, kind: 'k', payload: bytes, now: 10 })).row;
        const r2 = (await store.requests.insert({ owner: 'o', target: 't', seqId: 2, kind: 'k', payload: null, now: 20 })).row;
        const r3 = (await store.requests.insert({ owner: 'o', target: 't', seqId: 3, kind: 'k', payload: new Uint8Array(0), now: 30 })).row;
        const r4 = (await store.requests.insert({ owner: 'o', target: 'u', seqId: 1, kind: 'k', payload: null, now: 5 })).row;

        assert.deepEqual(r1.payload, bytes);
        assert.ok(!Buffer.isBuffer(r1.payload), 'a plain Uint8Array, not a Buffer');
        assert.deepEqual((await store.requests.get(r1.requestId, 'o'))?.payload, bytes);
        assert.equal(r2.payload, null);
        assert.deepEqual((await store.requests.get(r3.requestId, 'o'))?.payload, new Uint8Array(0));

        assert.deepEqual((await store.requests.unfinished()).map((r) => r.requestId), [r4, r1, r2, r3].map((r) => r.requestId));

        await store.requests.markRunning(r1.requestId);
        assert.equal((await store.requests.get(r1.requestId, 'o'))?.status, 'running');
        const result = bytes.slice().reverse();
        await store.requests.complete(r1.requestId, result, 100);
        const done = await store.requests.get(r1.requestId, 'o');
        assert.equal(done?.status, 'complete');
        assert.deepEqual(done?.result, result);
        assert.equal(done?.completedAt, 100);
        assert.equal(done?.error, null);
        await store.requests.markRunning(r1.requestId); // no-op once finished
        await store.requests.fail(r1.requestId, { message: 'late', category: 'server' }, 150); // first outcome wins
        assert.deepEqual(await store.requests.get(r1.requestId, 'o'), done);

        await store.requests.fail(r2.requestId, { message: 'bad input', category: 'user' }, 200);
        const failed = await store.requests.get(r2.requestId, 'o');
        assert.equal(failed?.status, 'failed');
        assert.deepEqual(failed?.error, { message: 'bad input', category: 'user' });
        assert.equal(failed?.result, null);
        assert.equal(failed?.completedAt, 200);

        await store.requests.markRunning(r3.requestId);
        assert.deepEqual((await store.requests.unfinished()).map((r) => [r.requestId, r.status]), [
          [r4.requestId, 'pending'],
          [r3.requestId, 'running'],
        ]);

        assert.equal(await store.requests.prune(100), 0, 'completedAt 100 is not before 100');
        assert.equal(await store.requests.prune(101), 1);
        assert.equal(await store.requests.get(r1.requestId, 'o'), undefined);
        assert.equal(await store.requests.prune(10_000), 1);
        assert.equal(await store.requests.get(r2.requestId, 'o'), undefined);
        assert.equal(await store.requests.prune(10_000), 0, 'unfinished requests are never pruned');
        assert.equal((await store.requests.unfinished()).length, 2);
        // A pruned (target, seq) can be submitted again.
        assert.equal((await store.requests.insert({ owner: 'o', target: 't', seqId: 1, kind: 'k', payload: null, now: 300 })).created, true);
      });
    });

    it('requests: dropPayloads forgets finished payloads of one target up to a seq, and nothing else', async () => {
      await withStore(lane, async (store) => {
        const batch = Uint8Array.from([1, 2, 3]);
        const ids = [];
        for (let seq = 1; seq <= 4; seq++) ids.push((await store.requests.insert({ owner: 'o', target: 't', seqId: seq, kind: 'k', payload: batch, now: seq })).row.requestId);
        const other = (await store.requests.insert({ owner: 'o', target: 'u', seqId: 1, kind: 'k', payload: batch, now: 1 })).row.requestId;
        for (const id of [ids[0]!, ids[1]!, other]) await store.requests.complete(id, new Uint8Array(0), 10);
        await store.requests.dropPayloads('t', 3); // seq 3 is still pending, seq 4 is beyond
        const payloads = await Promise.all([...ids, other].map(async (id) => (await store.requests.get(id, 'o'))?.payload ?? null));
        assert.deepEqual(payloads, [null, null, batch, batch, batch]);
        assert.deepEqual((await store.requests.get(ids[0]!, 'o'))?.status, 'complete', 'the result stays');
      });
    });

    it('requests: a refusal is logged already failed; progress finds the first unfinished seq and the finished ones beyond', async () => {
      await withStore(lane, async (store) => {
        assert.equal(await store.requests.progress('t'), undefined, 'nothing logged');
        const refusal = { message: 'token id 999999 is outside the vocabulary', category: 'user' as const, refused: { status: 400, type: 'token_out_of_vocab' } };
        const refused = await store.requests.insert({ owner: 'o', target: 't', seqId: 4, kind: 'forward_backward', payload: null, now: 7, error: refusal });
        assert.equal(refused.created, true);
        assert.equal(refused.row.status, 'failed');
        assert.deepEqual(refused.row.error, refusal);
        assert.equal(refused.row.completedAt, 7);
        assert.deepEqual(await store.requests.get(refused.row.requestId, 'o'), refused.row);
        // A retry finds the refusal.
        assert.deepEqual((await store.requests.insert({ owner: 'o', target: 't', seqId: 4, kind: 'forward_backward', payload: null, now: 8 })).row, refused.row);
        assert.deepEqual(await store.requests.progress('t'), { nextSeq: 5, finishedAfter: [] });
        // 0-1 finished, 2 pending, 3 missing, 4 refused, 6 finished: the run stands at 2 and passes 4 and 6 later.
        for (const seq of [0, 1, 2, 6]) {
          const { row } = await store.requests.insert({ owner: 'o', target: 't', seqId: seq, kind: 'k', payload: null, now: seq });
          if (seq !== 2) await store.requests.complete(row.requestId, new Uint8Array(0), 10);
        }
        await store.requests.insert({ owner: 'o', target: 'u', seqId: 2, kind: 'k', payload: null, now: 1, error: refusal });
        assert.deepEqual(await store.requests.progress('t'), { nextSeq: 2, finishedAfter: [4, 6] });
        assert.deepEqual(await store.requests.progress('u'), { nextSeq: 3, finishedAfter: [] });
      });
    });

    it('checkpoints: put/replace keeps public, visibility, listing, delete, expiry', async () => {
      await withStore(lane, async (store) => {
        const sid = await newSession(store, 'alice');
        const m = (await newRun(store, 'alice', sid, 0, 1)).modelId;
        const bobSid = await newSession(store, 'bob');
        const bm = (await newRun(store, 'bob', bobSid, 0, 1)).modelId;

        const c1 = await store.checkpoints.put(checkpoint(m, 'alice', 'step_1', 100));
        assert.deepEqual(c1, {
          modelId: m,
          checkpointId: 'weights/step_1',
          owner: 'alice',
          checkpointType: 'training',
          tinkerPath: `tinker://${m}/weights/step_1`,
          storagePath: `/data/${m}/weights/step_1`,
          sizeBytes: 1234,
          public: false,
          createdAt: 100,
          expiresAt: null,
          ephemeral: false,
          userMetadata: null,
        });
        const c2 = await store.checkpoints.put(checkpoint(m, 'alice', 'step_2', 200, { sampler: true }));
        await store.checkpoints.put(checkpoint(m, 'alice', 'tmp', 300, { sampler: true, ephemeral: true }));
        const c3 = await store.checkpoints.put(checkpoint(m, 'alice', 'step_3', 250));
        await store.checkpoints.put(checkpoint(bm, 'bob', 'b1', 400));
        await assert.rejects(store.checkpoints.put(checkpoint('no-such-run', 'alice', 'x', 1)), 'the run must exist');
        await assert.rejects(store.checkpoints.put(checkpoint(m, 'bob', 'step_1', 500)), StoreConflictError);

        // Newest first, ephemeral left out.
        assert.deepEqual((await store.checkpoints.listForRun(m, 'alice')).map((c) => c.checkpointId), ['weights/step_3', 'sampler_weights/step_2', 'weights/step_1']);
        const page = await store.checkpoints.listForOwner('alice', 2, 0);
        assert.equal(page.total, 3);
        assert.deepEqual(page.checkpoints.map((c) => c.checkpointId), ['weights/step_3', 'sampler_weights/step_2']);
        const page2 = await store.checkpoints.listForOwner('alice', 2, 2);
        assert.deepEqual([page2.total, page2.checkpoints.map((c) => c.checkpointId)], [3, ['weights/step_1']]);
        assert.deepEqual((await store.checkpoints.listForOwner('bob', 10, 0)).checkpoints.map((c) => c.modelId), [bm]);
        assert.deepEqual(await store.checkpoints.listForOwner('carol', 10, 0), { checkpoints: [], total: 0 });
        // The ephemeral one is still addressable.
        assert.equal((await store.checkpoints.get(m, 'sampler_weights/tmp', 'alice'))?.ephemeral, true);

        // Private: invisible to others.
        assert.equal(await store.checkpoints.get(m, 'weights/step_1', 'bob'), undefined);
        assert.equal(await store.checkpoints.byTinkerPath(c1.tinkerPath, 'bob'), undefined);
        assert.deepEqual(await store.checkpoints.listForRun(m, 'bob'), []);
        assert.deepEqual(await store.checkpoints.byTinkerPath(c1.tinkerPath, 'alice'), c1);
        assert.equal(await store.checkpoints.setPublic(m, 'weights/step_1', 'bob', true), false, 'only the owner publishes');
        assert.equal(await store.checkpoints.setPublic(m, 'weights/nope', 'alice', true), false);

        // Public: visible to others, still not theirs to change.
        assert.equal(await store.checkpoints.setPublic(m, 'weights/step_1', 'alice', true), true);
        assert.equal(await store.checkpoints.setPublic(m, 'weights/step_1', 'alice', true), true, 'publishing twice is fine');
        assert.equal((await store.checkpoints.get(m, 'weights/step_1', 'bob'))?.public, true);
        assert.equal((await store.checkpoints.byTinkerPath(c1.tinkerPath, 'bob'))?.checkpointId, 'weights/step_1');
        assert.deepEqual((await store.checkpoints.listForRun(m, 'bob')).map((c) => c.checkpointId), ['weights/step_1']);
        assert.equal((await store.checkpoints.listForOwner('bob', 10, 0)).total, 1, "others' public checkpoints are not in bob's own list");
        assert.equal(await store.checkpoints.delete(m, 'weights/step_1', 'bob'), undefined);
        assert.equal(await store.checkpoints.setExpiry(m, 'weights/step_1', 'bob', 5), false);

        // Storage usage: listed (non-ephemeral) checkpoints of the owner, in all or of one project.
        assert.deepEqual(await store.checkpoints.usage('alice'), { count: 3, bytes: 3 * 1234 });
        assert.deepEqual(await store.checkpoints.usage('carol'), { count: 0, bytes: 0 });
        assert.deepEqual(await store.checkpoints.usage('alice', 'proj'), { count: 0, bytes: 0 });
        assert.equal(await store.sessions.setProject(sid, 'alice', 'proj'), true);
        assert.deepEqual(await store.checkpoints.usage('alice', 'proj'), { count: 3, bytes: 3 * 1234 });

        // Replace: new fields and time, `public` kept.
        const replaced = await store.checkpoints.put({ ...checkpoint(m, 'alice', 'step_1', 900), storagePath: '/data/new', sizeBytes: 5_000_000_000, userMetadata: { note: 'x' } });
        assert.deepEqual(replaced.userMetadata, { note: 'x' });
        assert.deepEqual(await store.checkpoints.usage('alice'), { count: 3, bytes: 5_000_000_000 + 2 * 1234 });
        assert.equal(replaced.public, true);
        assert.equal(replaced.storagePath, '/data/new');
        assert.equal(replaced.sizeBytes, 5_000_000_000);
        assert.equal(replaced.createdAt, 900);
        assert.deepEqual(await store.checkpoints.get(m, 'weights/step_1', 'alice'), replaced);
        assert.deepEqual((await store.checkpoints.listForRun(m, 'alice')).map((c) => c.checkpointId), ['weights/step_1', 'weights/step_3', 'sampler_weights/step_2']);
        assert.equal((await store.checkpoints.listForOwner('alice', 10, 0)).total, 3);
        assert.equal(await store.checkpoints.setPublic(m, 'weights/step_1', 'alice', false), true);
        assert.equal(await store.checkpoints.get(m, 'weights/step_1', 'bob'), undefined);

        // Expiry.
        assert.deepEqual(await store.checkpoints.expired(10_000), []);
        assert.equal(await store.checkpoints.setExpiry(m, c2.checkpointId, 'alice', 1000), true);
        assert.equal(await store.checkpoints.setExpiry(m, c3.checkpointId, 'alice', 2000), true);
        await store.checkpoints.put(checkpoint(bm, 'bob', 'b2', 400, { expiresAt: 1500 }));
        assert.deepEqual((await store.checkpoints.expired(999)).map((c) => c.checkpointId), []);
        assert.deepEqual((await store.checkpoints.expired(1000)).map((c) => c.checkpointId), ['sampler_weights/step_2']);
        assert.deepEqual((await store.checkpoints.expired(5000)).map((c) => [c.owner, c.checkpointId]), [
          ['alice', 'sampler_weights/step_2'],
          ['bob', 'weights/b2'],
          ['alice', 'weights/step_3'],
        ]);
        assert.equal(await store.checkpoints.setExpiry(m, c3.checkpointId, 'alice', null), true);
        assert.equal((await store.checkpoints.get(m, c3.checkpointId, 'alice'))?.expiresAt, null);
        assert.equal((await store.checkpoints.expired(5000)).length, 2);

        // Delete returns the row; it is gone afterwards.
        const deleted = await store.checkpoints.delete(m, c2.checkpointId, 'alice');
        assert.equal(deleted?.storagePath, c2.storagePath);
        assert.equal(deleted?.expiresAt, 1000);
        assert.equal(await store.checkpoints.delete(m, c2.checkpointId, 'alice'), undefined);
        assert.equal(await store.checkpoints.get(m, c2.checkpointId, 'alice'), undefined);
        assert.equal(await store.checkpoints.byTinkerPath(c2.tinkerPath, 'alice'), undefined);
        assert.equal((await store.checkpoints.listForOwner('alice', 10, 0)).total, 2);
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
