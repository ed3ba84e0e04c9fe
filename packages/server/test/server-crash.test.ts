// Worker crashes: runs rebuilt from their snapshot and request log, with loaded checkpoints, held
// results and the Dimuon optimizer.
// One real server (SQLite, real worker processes) for the file: fixtures/server-suite.ts.
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { sql } from 'kysely';
import { SNAPSHOT_EVERY } from '../src/services.js';
import { until } from './until.js';
import { call, createModel, forward, forwardLoss, MODEL, outcome, owner, result, server, session, submitDatum, useSuiteServer } from './fixtures/server-suite.js';

useSuiteServer();

test('a crashed worker is restarted and its runs are rebuilt from the request log', async () => {
  const id = await session();
  const created = await call('POST', '/api/v1/create_model', { session_id: id, model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4, seed: 3 }, type: 'create_model' });
  await result(created.body['request_id'] as string);
  const modelId = created.body['model_id'] as string;
  let seq = 0;
  const fwdbwd = async (forwardOnly: boolean): Promise<number> => {
    const done = await result(await submitDatum(modelId, ++seq, forwardOnly));
    return (done['metrics'] as Record<string, number>)['loss:sum']!;
  };
  // 12 steps: recovery loads the snapshot taken at step 10, then replays the last two steps.
  for (let step = 0; step < 12; step++) {
    await fwdbwd(false);
    const stepped = await call('POST', '/api/v1/optim_step', { model_id: modelId, seq_id: ++seq, adam_params: { learning_rate: 0.01 }, type: 'optim_step' });
    await result(stepped.body['request_id'] as string);
  }
  const before = await fwdbwd(true);
  const pid = (await server.services.pool.pids())[MODEL];
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  // No waiting for the pool to notice: the next request may find the dead worker's client still
  // there (its socket closes before the exit event), and must start a fresh worker all the same,
  // which replays the run's log: same weights as before.
  const after = await fwdbwd(true);
  assert.ok(Math.abs(after - before) < 1e-4 * Math.abs(before), `loss ${before} before the crash, ${after} after`);
  assert.notEqual((await server.services.pool.pids())[MODEL], pid);
});

test('a checkpoint loaded after a failed rebuild replaces the lost weights for good', async () => {
  const modelId = await createModel(5);
  let seq = 0;
  const step = async (body: Record<string, unknown>, url: string) => {
    const r = await call('POST', url, { model_id: modelId, seq_id: ++seq, ...body });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return result(r.body['request_id'] as string);
  };
  assert.ok('metrics' in (await result((await forward(modelId, ++seq, false)).requestId)));
  const a = (await step({ path: 'a', type: 'save_weights' }, '/api/v1/save_weights'))['path'] as string;
  const b = (await step({ path: 'b', type: 'save_weights' }, '/api/v1/save_weights'))['path'] as string;
  await step({ path: a, optimizer: false, type: 'load_weights' }, '/api/v1/load_weights');
  // Losing the run's snapshot (taken when `a` was loaded) makes it impossible to rebuild once its worker is gone.
  const snapshots = path.join(server.services.dataDir, 'snapshots', encodeURIComponent(modelId));
  rmSync((JSON.parse(readFileSync(path.join(snapshots, 'latest.json'), 'utf8')) as { path: string }).path, { recursive: true });
  const pid = (await server.services.pool.pids())[MODEL];
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  await until('the pool to notice the crash', async () => (server.services.pool.has(MODEL) ? undefined : true));
  // The rebuild fails, but loading `b` restores the run; the next request must not rebuild again.
  const loaded = await step({ path: b, optimizer: false, type: 'load_weights' }, '/api/v1/load_weights');
  assert.equal(loaded['type'], 'load_weights', JSON.stringify(loaded));
  const next = await result((await forward(modelId, ++seq, true)).requestId);
  assert.ok('metrics' in next, JSON.stringify(next));
});

test('results that the store cannot record are answered from memory, kept in seq order, replayed after a crash, and written once the store works again', async () => {
  const modelId = await createModel(7);
  const db = server.services.store.db;
  const store = server.services.store.requests;
  // Every write about seq 1 of this run fails in the database itself (as on a full disk).
  await sql`CREATE TRIGGER refuse_seq1 BEFORE UPDATE ON requests WHEN OLD.target = ${sql.lit(modelId)} AND OLD.seq_id = 1 BEGIN SELECT RAISE(ABORT, 'simulated full disk'); END`.execute(db);
  let dropped = false;
  try {
    const first = await forward(modelId, 1, false);
    assert.equal(first.status, 200, first.body);
    // One poll answers with the real result, although the log could not take it.
    const served = await call('POST', '/api/v1/retrieve_future', { request_id: first.requestId, allow_metadata_only: true });
    assert.equal(served.status, 200, JSON.stringify(served.body));
    assert.ok('metrics' in served.body, JSON.stringify(served.body));
    assert.equal((await store.get(first.requestId, owner))?.status, 'pending');
    const stepped = await call('POST', '/api/v1/optim_step', { model_id: modelId, seq_id: 2, adam_params: { learning_rate: 0.05 }, type: 'optim_step' });
    assert.equal((await result(stepped.body['request_id'] as string))['type'], 'optim_step');
    // seq 2 could be written, but waits behind seq 1: the log holds a prefix of the run.
    assert.equal((await store.get(stepped.body['request_id'] as string, owner))?.status, 'pending');
    const lossOf = async (seqId: number) => ((await result((await forward(modelId, seqId, true)).requestId))['metrics'] as Record<string, number>)['loss:sum']!;
    const before = await lossOf(3);
    // A crash now: the rebuild must replay the held seq 1 and 2 too, or the weights differ.
    const pid = (await server.services.pool.pids())[MODEL];
    assert.ok(pid);
    process.kill(pid, 'SIGKILL');
    const after = await lossOf(4);
    assert.ok(Math.abs(after - before) < 1e-4 * Math.abs(before), `loss ${before} before the crash, ${after} after`);
    // The store works again: everything held is written, in order, with the results that were served.
    await sql`DROP TRIGGER refuse_seq1`.execute(db);
    dropped = true;
    const recorded = await until('the held results to be written', async () => {
      const row = await store.findBySeq(modelId, 4, owner);
      return row?.status === 'complete' ? row : undefined;
    });
    assert.ok(recorded);
    for (let seq = 1; seq <= 4; seq++) assert.equal((await store.findBySeq(modelId, seq, owner))?.status, 'complete', `seq ${seq}`);
    assert.equal(server.services.completion.pending, 0);
    assert.deepEqual(await result(first.requestId), served.body);
  } finally {
    if (!dropped) await sql`DROP TRIGGER refuse_seq1`.execute(db);
  }
});

test('a run whose worker dies after it loaded a since-deleted checkpoint is rebuilt with the loaded weights', async () => {
  const modelId = await createModel(7);
  let seq = 0;
  const step = async (url: string, body: Record<string, unknown>) => {
    const r = await call('POST', url, { model_id: modelId, seq_id: ++seq, ...body });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const done = await outcome(r.body['request_id'] as string);
    assert.ok(!('error' in done), JSON.stringify(done));
    return done;
  };
  const train = async () => {
    assert.ok('metrics' in (await outcome((await forward(modelId, ++seq, false)).requestId)));
    await step('/api/v1/optim_step', { adam_params: { learning_rate: 0.05 }, type: 'optim_step' });
  };
  await train();
  const saved = (await step('/api/v1/save_weights', { path: 'x', type: 'save_weights' }))['path'] as string;
  const atSave = await forwardLoss(modelId, ++seq);
  await train();
  const trained = await forwardLoss(modelId, ++seq);
  assert.ok(Math.abs(trained - atSave) > 1e-3 * Math.abs(atSave), `training changed the loss (${atSave} -> ${trained})`);
  await step('/api/v1/load_weights', { path: saved, optimizer: true, type: 'load_weights' });
  const loaded = await forwardLoss(modelId, ++seq);
  assert.ok(Math.abs(loaded - atSave) < 1e-4 * Math.abs(atSave), `loaded ${loaded}, saved at ${atSave}`);
  // The checkpoint goes, then the worker: the run is rebuilt all the same, with the loaded weights.
  assert.equal((await call('DELETE', `/api/v1/training_runs/${modelId}/checkpoints/weights/x`)).status, 200);
  const pid = (await server.services.pool.pids())[MODEL];
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  const after = await forwardLoss(modelId, ++seq);
  assert.ok(Math.abs(after - loaded) < 1e-4 * Math.abs(loaded), `loss ${loaded} before the crash, ${after} after`);
  // And training goes on from there (the optimizer state came along).
  await train();
});

test('Dimuon runs come back as Dimuon after a worker crash, from their snapshot or from the replayed create', async () => {
  const dimuon = { optimizer_config: { type: 'dimuon' } };
  // One run past its first snapshot (taken at step SNAPSHOT_EVERY), one that never took one.
  const runs = [{ modelId: await createModel(5, dimuon), steps: SNAPSHOT_EVERY + 1, seq: 0 }, { modelId: await createModel(6, dimuon), steps: 2, seq: 0 }];
  for (const run of runs) {
    for (let i = 0; i < run.steps; i++) {
      assert.ok('metrics' in (await outcome((await forward(run.modelId, ++run.seq, false)).requestId)));
      const stepped = await call('POST', '/api/v1/optim_step', { model_id: run.modelId, seq_id: ++run.seq, optimizer_params: { type: 'dimuon', learning_rate: 0.02 }, type: 'optim_step' });
      assert.equal(stepped.status, 200, JSON.stringify(stepped.body));
      assert.ok('metrics' in (await outcome(stepped.body['request_id'] as string)));
    }
  }
  const before = await Promise.all(runs.map((run) => forwardLoss(run.modelId, ++run.seq)));
  const pid = (await server.services.pool.pids())[MODEL];
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  const after = await Promise.all(runs.map((run) => forwardLoss(run.modelId, ++run.seq)));
  runs.forEach((run, i) => {
    const [was, is] = [before[i] ?? NaN, after[i] ?? NaN];
    assert.ok(Math.abs(is - was) < 1e-4 * Math.abs(was), `${run.modelId}: loss ${was} before the crash, ${is} after`);
  });
  // The rebuilt slots use Dimuon (an AdamW slot would refuse the Dimuon steps below).
  const worker = await server.services.pool.client(MODEL);
  const stats = (await worker.request('stats', {})) as { adapters: { adapter: string; optimizer: unknown }[] };
  for (const run of runs) assert.deepEqual(stats.adapters.find((a) => a.adapter === run.modelId)?.optimizer, { type: 'dimuon', version: 1 });
  for (const run of runs) {
    await outcome((await forward(run.modelId, ++run.seq, false)).requestId);
    const stepped = await call('POST', '/api/v1/optim_step', { model_id: run.modelId, seq_id: ++run.seq, optimizer_params: { type: 'dimuon', learning_rate: 0.02 }, type: 'optim_step' });
    const done = await outcome(stepped.body['request_id'] as string);
    assert.ok('metrics' in done, JSON.stringify(done));
  }
});
