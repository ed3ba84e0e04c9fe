/**
 * Store tests: the request log: dedupe, ordering, outcomes, payloads and server ownership. Every test runs on SQLite and, with `LATHE_TEST_DATABASE_URL`, on
 * PostgreSQL (fixtures/store-lanes.ts).
 *
 *   scripts/with-postgres.sh node --conditions=lathe-source --import tsx --test packages/server/test/store-requests.test.ts
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StoreConflictError } from '../src/store/index.js';
import { LORA, newRun, newSession, storeLanes, withStore } from './fixtures/store-lanes.js';

for (const lane of storeLanes()) {
  const it = (name: string, fn: () => Promise<void>) => test(`[${lane.name}] ${name}`, { skip: lane.skip }, fn);

  describe(`store (${lane.name})`, () => {
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
  });
}
