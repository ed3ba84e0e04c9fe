/**
 * Store tests: training runs, samplers and checkpoints. Every test runs on SQLite and, with `LATHE_TEST_DATABASE_URL`, on
 * PostgreSQL (fixtures/store-lanes.ts).
 *
 *   scripts/with-postgres.sh node --conditions=lathe-source --import tsx --test packages/server/test/store-runs.test.ts
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StoreConflictError, type RunRow } from '../src/store/index.js';
import { checkpoint, newRun, newSession, storeLanes, withStore } from './fixtures/store-lanes.js';

for (const lane of storeLanes()) {
  const it = (name: string, fn: () => Promise<void>) => test(`[${lane.name}] ${name}`, { skip: lane.skip }, fn);

  describe(`store (${lane.name})`, () => {
    it('runs: idempotent create, owner isolation, listing, touch/state/corrupted', async () => {
      await withStore(lane, async (store) => {
        const sid = await newSession(store, 'alice');
        const given = {
          modelId: `${sid}:train:0`,
          owner: 'alice',
          sessionId: sid,
          baseModel: 'Qwen/Qwen3-8B',
          loraRank: 32,
          loraConfig: { rank: 32, seed: 7, trainAttn: true, trainMlp: false, trainUnembed: true },
          userMetadata: { purpose: 'test' },
        };
        const run = await store.runs.create({ ...given, now: 1000 });
        const expected: RunRow = {
          ...given,
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
  });
}
