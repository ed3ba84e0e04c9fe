/**
 * recovery: how long training stalls when its worker is killed with SIGKILL mid-run, and how much is replayed.
 *
 * Setup: one server (lathe/tiny-qwen3, in this process, over HTTP), --runs training runs, one per API key.
 * Each run submits its whole run at once, pipelined as the SDK does: --steps x (forward_backward of
 * --batch datums x --tokens tokens, then optim_step). Once the first run's step --kill-at is done, the
 * worker process gets SIGKILL; the server starts a new one, restores each run's latest snapshot (taken
 * every --snapshot-every optimizer steps) and replays the logged requests after it, then goes on.
 *
 * Measured, in one run:
 *   recovery   from the kill to the next optimizer step finished (any run): a new worker, snapshot
 *              loads, replays, and that step itself
 *   step       the median time between consecutive optimizer steps before the kill (the baseline)
 *   cold start a worker process started and its model loaded, alone (a second baseline)
 * ratio = recovery / step (how many normal steps a crash costs); also recovery / cold start, and the
 * requests each run's rebuild replayed. Every future must complete. Last stdout line: JSON summary.
 *
 *   npm run bench -- recovery [--runs 2] [--steps 30] [--kill-at 15] [--snapshot-every 10] ...
 */
import path from 'node:path';
import type { WireDatum } from '@lathe/protocol';
import { startLocalWorker } from '../../packages/server/src/worker/process.js';
import { quantile, runBench } from './_http.js';
import { parseBenchArgs } from './_args.js';
import { withBenchServer } from './_tenants.js';

const USAGE = `usage: npm run bench -- recovery [options]

  --runs N             training runs, one per API key (default 2)
  --steps N            steps per run, all submitted at once (default 30)
  --kill-at N          SIGKILL the worker once the first run finished this many steps (default 15)
  --snapshot-every N   the server's snapshot interval in optimizer steps (default 10)
  --batch N            datums per forward_backward (default 4)
  --tokens N           tokens per datum (default 64)
  --model NAME         base model (default lathe/tiny-qwen3)
  --models-dir DIR     where models live (default <repo>/.lathe/models)
`;

function datum(run: number, step: number, row: number, length: number): WireDatum {
  const tokens = Array.from({ length: length + 1 }, (_, i) => 1 + ((run * 7919 + step * 104_729 + row * 1_299_709 + i * 15_485_863) % 150_000));
  return { modelInput: tokens.slice(0, -1), lossFnInputs: { target_tokens: { dtype: 'int64', shape: [length], data: BigInt64Array.from(tokens.slice(1), BigInt) } } };
}

async function main(): Promise<number> {
  const values = parseBenchArgs(USAGE, {
    runs: { type: 'string', default: '2' },
    steps: { type: 'string', default: '30' },
    'kill-at': { type: 'string', default: '15' },
    'snapshot-every': { type: 'string', default: '10' },
    batch: { type: 'string', default: '4' },
    tokens: { type: 'string', default: '64' },
  });
  if (values === undefined) return 0;
  const n = (name: keyof typeof values): number => Number(values[name]);
  const model = values.model;
  const modelsDir = path.resolve(values['models-dir']);
  if (n('kill-at') < 1 || n('kill-at') >= n('steps')) throw new Error('--kill-at must be at least 1 and below --steps');
  // Baseline 2: a worker's cold start (process, model load), on its own.
  const coldStarted = performance.now();
  const cold = await startLocalWorker({ modelsDir, model });
  const coldStartMs = performance.now() - coldStarted;
  await cold.stop();

  return withBenchServer({ model, modelsDir, snapshotEvery: n('snapshot-every') }, async (bench) => {
    const server = bench.server;
    const tenants = await Promise.all(
      Array.from({ length: n('runs') }, async (_, i) => {
        const tenant = await bench.tenant(`tenant-${i}`);
        const run = await tenant.createRun();
        /** When a future finished (ms), re-polling on 408 as the SDK does. */
        const finished = (requestId: unknown) => tenant.result(requestId).then(() => performance.now());
        return { run, finished, modelId: run.modelId };
      }),
    );

    // Every run submits its whole run, then watches each optimizer step finish.
    const steps: Promise<number>[][] = tenants.map(() => []);
    const waits: Promise<number>[] = [];
    for (let step = 0; step < n('steps'); step++) {
      for (const [i, t] of tenants.entries()) {
        const data = Array.from({ length: n('batch') }, (_, row) => datum(i, step, row, n('tokens')));
        const [fb, optim] = await t.run.step(data);
        waits.push(t.finished(fb));
        steps[i]!.push(t.finished(optim));
      }
    }
    await steps[0]![n('kill-at') - 1];
    const pid = (await server.services.pool.pids())[model];
    if (!pid) throw new Error('no live worker to kill');
    const killedAt = performance.now();
    process.kill(pid, 'SIGKILL');
    const done = await Promise.all(steps.map((run) => Promise.all(run)));
    await Promise.all(waits);

    const all = done.flat();
    const before = all.filter((t) => t < killedAt).sort((a, b) => a - b);
    const after = all.filter((t) => t >= killedAt).sort((a, b) => a - b);
    const recoveryMs = after[0]! - killedAt;
    // Steps of all runs finish interleaved: the baseline is the gap between consecutive ones.
    const gaps = before.slice(1).map((t, i) => t - before[i]!).sort((a, b) => a - b);
    const stepMs = quantile(gaps, 0.5);
    const rebuilt = server.services.recoveries.map(({ modelId, fromSeq, replayed, ms }) => ({ run: tenants.findIndex((t) => t.modelId === modelId), fromSeq, replayed, ms }));
    const replayed = rebuilt.reduce((sum, r) => sum + r.replayed, 0);

    console.log(`${n('runs')} runs x ${n('steps')} steps (forward_backward of ${n('batch')} x ${n('tokens')} tokens + optim_step), snapshot every ${n('snapshot-every')} steps; worker killed after step ${n('kill-at')} of run 0 (${before.length} of ${all.length} steps done)`);
    console.log(`  recovery (kill -> next step done)  ${recoveryMs.toFixed(0).padStart(7)} ms`);
    console.log(`  normal step (median gap)           ${stepMs.toFixed(0).padStart(7)} ms`);
    console.log(`  worker cold start                  ${coldStartMs.toFixed(0).padStart(7)} ms`);
    for (const r of rebuilt) console.log(`  run ${r.run}: rebuilt from ${r.fromSeq < 0 ? 'its create (no snapshot)' : `the snapshot at seq ${r.fromSeq}`}, ${r.replayed} requests replayed, ${r.ms} ms`);
    console.log(`recovery / normal step: ${(recoveryMs / stepMs).toFixed(1)}x;  recovery / cold start: ${(recoveryMs / coldStartMs).toFixed(2)}x;  requests replayed: ${replayed}`);
    console.log(JSON.stringify({
      bench: 'recovery', model, ratio: recoveryMs / stepMs, baseline: 'median step gap before the kill',
      recovery_ms: recoveryMs, step_ms: stepMs, cold_start_ms: coldStartMs, recovery_over_cold_start: recoveryMs / coldStartMs,
      replayed, rebuilt, runs: n('runs'), steps: n('steps'), kill_at: n('kill-at'), snapshot_every: n('snapshot-every'), batch: n('batch'), tokens: n('tokens'),
    }));
    return 0;
  });
}

runBench(main);
