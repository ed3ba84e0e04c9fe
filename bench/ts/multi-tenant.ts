/**
 * multi-tenant: 8 users training 8 adapters at once on one worker, vs one user with the same total batch and vs the 8 jobs one after another.
 *
 * Setup: one server (lathe/tiny-qwen3 by default, in this process, over HTTP). Each user is its own
 * API key with one training run (LoRA rank 8) and does --steps steps of forward_backward
 * (--batch datums x --tokens tokens) + optim_step, pipelined (--window requests in flight, as the
 * SDK's futures allow).
 *
 * Measured, in one run (after a warm-up step of every run):
 *   single      one run, --users x --batch datums per step: the same tokens per step in one adapter
 *   sequential  the --users runs one after another, each alone on the server
 *   together    all --users runs at once (the lane packs their ready requests into shared cycles)
 * Ratios: together tokens/s / single tokens/s (target >= 0.9), together / sequential (must be > 1),
 * and fairness: max / min training tokens served per user at the moment the first user finished
 * (target <= 1.2; counted in whole steps, so --steps bounds how fine it can be), and the spread of
 * the users' finish times (last / first). Last stdout line: JSON summary.
 *
 *   npm run bench -- multi-tenant [--users 8] [--steps 10] [--batch 2] [--tokens 128] [--window 4]
 */
import path from 'node:path';
import type { WireDatum } from '@lathe/protocol';
import { datum, withBenchServer, type BenchRun, type Tenant } from './_tenants.js';
import { runBench } from './_http.js';
import { parseBenchArgs } from './_args.js';

const USAGE = `usage: npm run bench -- multi-tenant [options]

  --users N         users (API keys), one run each (default 8)
  --steps N         timed steps per run and phase (default 10)
  --batch N         datums per user's forward_backward (default 2)
  --tokens N        tokens per datum (default 128)
  --window N        requests each run keeps in flight (default 4)
  --model NAME      base model (default lathe/tiny-qwen3)
  --models-dir DIR  where models live (default <repo>/.lathe/models)
`;

/** Runs `steps` pipelined steps of `data`; calls `onStep` as each forward_backward completes. */
async function train(tenant: Tenant, run: BenchRun, data: WireDatum[], steps: number, window: number, onStep: () => void = () => {}): Promise<void> {
  const inFlight: Array<{ id: unknown; forward: boolean }> = [];
  const settle = async () => {
    const next = inFlight.shift()!;
    await tenant.result(next.id);
    if (next.forward) onStep();
  };
  for (let i = 0; i < steps; i++) {
    const [fb, optim] = await run.step(data);
    inFlight.push({ id: fb, forward: true }, { id: optim, forward: false });
    while (inFlight.length >= window) await settle();
  }
  while (inFlight.length > 0) await settle();
}

async function main(): Promise<number> {
  const values = parseBenchArgs(USAGE, {
    users: { type: 'string', default: '8' },
    steps: { type: 'string', default: '10' },
    batch: { type: 'string', default: '2' },
    tokens: { type: 'string', default: '128' },
    window: { type: 'string', default: '4' },
  });
  if (values === undefined) return 0;
  const n = (name: keyof typeof values): number => Number(values[name]);
  const [users, steps, window] = [n('users'), n('steps'), n('window')];
  const userData = Array.from({ length: n('batch') }, () => datum(n('tokens')));
  const stepTokens = n('batch') * n('tokens');
  return withBenchServer({ model: values.model, modelsDir: path.resolve(values['models-dir']) }, async (bench) => {
    const lane = bench.server.services.lane(values.model);
    const tenants = await Promise.all(Array.from({ length: users }, (_, i) => bench.tenant(`user-${i}`)));
    const runs = await Promise.all(tenants.map((tenant) => tenant.createRun()));
    const singleRun = await tenants[0]!.createRun();
    const singleData = Array.from({ length: users }, () => userData).flat();
    // Warm-up: every adapter takes one step, so no phase pays a first-use cost.
    await train(tenants[0]!, singleRun, singleData, 1, window);
    await Promise.all(runs.map((run, i) => train(tenants[i]!, run, userData, 1, window)));

    const timed = async (body: () => Promise<void>): Promise<{ seconds: number; cycles: number }> => {
      const [start, c0] = [performance.now(), lane.cycles];
      await body();
      return { seconds: (performance.now() - start) / 1000, cycles: lane.cycles - c0 };
    };
    const totalTokens = users * steps * stepTokens;
    const single = await timed(() => train(tenants[0]!, singleRun, singleData, steps, window));
    const sequential = await timed(async () => {
      for (const [i, run] of runs.entries()) await train(tenants[i]!, run, userData, steps, window);
    });
    const served = new Array<number>(users).fill(0);
    const firstFinish: { served?: number[] } = {};
    const finishedAt: number[] = [];
    const start = performance.now();
    const together = await timed(() =>
      Promise.all(
        runs.map(async (run, i) => {
          await train(tenants[i]!, run, userData, steps, window, () => { served[i] = (served[i] ?? 0) + stepTokens; });
          firstFinish.served ??= [...served];
          finishedAt.push(performance.now() - start);
        }),
      ).then(() => undefined),
    );

    const servedAtFirstFinish = firstFinish.served ?? served;
    const rate = (phase: { seconds: number }) => totalTokens / phase.seconds;
    const fairness = Math.max(...servedAtFirstFinish) / Math.max(1, Math.min(...servedAtFirstFinish));
    const finishSpread = Math.max(...finishedAt) / Math.min(...finishedAt);
    const vsSingle = rate(together) / rate(single);
    const vsSequential = rate(together) / rate(sequential);
    const row = (name: string, phase: { seconds: number; cycles: number }) =>
      `  ${name.padEnd(10)} ${phase.seconds.toFixed(2).padStart(7)} s  ${rate(phase).toFixed(1).padStart(8)} tok/s  ${String(phase.cycles).padStart(4)} lane cycles`;
    console.log(`${users} users x ${steps} steps of ${n('batch')} x ${n('tokens')} tokens (+ optim_step), ${window} requests in flight per run, ${values.model}:`);
    console.log(row('single', single));
    console.log(row('sequential', sequential));
    console.log(row('together', together));
    console.log(`together / single ${vsSingle.toFixed(2)} (target >= 0.9); together / sequential ${vsSequential.toFixed(2)} (must be > 1)`);
    console.log(`fairness: tokens served per user when the first finished ${servedAtFirstFinish.join(', ')}; max / min ${fairness.toFixed(2)} (target <= 1.2); finish times last / first ${finishSpread.toFixed(2)}`);
    console.log(JSON.stringify({ bench: 'multi-tenant', model: values.model, ratio: vsSingle, baseline: 'single', vsSequential, fairness, finishSpread, servedAtFirstFinish, seconds: { single: single.seconds, sequential: sequential.seconds, together: together.seconds }, cycles: { single: single.cycles, sequential: sequential.cycles, together: together.cycles }, tokensPerSecond: { single: rate(single), sequential: rate(sequential), together: rate(together) } }));
    return 0;
  });
}

runBench(main);
