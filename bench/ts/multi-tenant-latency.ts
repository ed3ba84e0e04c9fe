/**
 * multi-tenant-latency: A small user's step latency while another API key floods the same base model, vs running alone.
 *
 * Setup: one server (lathe/tiny-qwen3, in this process, over HTTP). Key B has one training run and
 * does --steps sequential small steps (a forward_backward of one --small-tokens datum, then an
 * optim_step, sent pipelined; the step ends when both futures are done). Key A floods: --flood-runs
 * runs, each keeping --window requests in flight (forward_backward of --flood-batch datums x
 * --flood-tokens, then optim_step, pipelined), plus a loop of large samples (--sample-n samples x
 * --sample-tokens tokens, one at a time).
 *
 * Measured, in one run:
 *   alone   B's steps with nothing else on the server (the baseline)
 *   loaded  B's steps while A floods
 * slowdown = loaded / alone (p50 and p99; 1 = the flood costs B nothing), and the lane cycles each of
 * B's steps waited (cycles started between its submit and its last result; a step needs at least 2).
 * Last stdout line: JSON summary.
 *
 *   npm run bench -- multi-tenant-latency [--steps 20] [--flood-runs 2] [--window 8] ...
 */
import path from 'node:path';
import { quantile, runBench } from './_http.js';
import { parseBenchArgs } from './_args.js';
import { datum, PROMPT, withBenchServer } from './_tenants.js';

const USAGE = `usage: npm run bench -- multi-tenant-latency [options]

  --steps N                timed steps of the small user per phase (default 20)
  --small-tokens N         tokens of the small user's datum (default 16)
  --flood-runs N           training runs of the flooding key (default 2)
  --window N               requests each flooding run keeps in flight (default 8)
  --flood-batch N          datums per flooding forward_backward (default 8)
  --flood-tokens N         tokens per flooding datum (default 256)
  --sample-n N             samples per flooding asample (default 128)
  --sample-tokens N        max_tokens per flooding asample (default 64)
  --cycle-tokens N         the lane's forward token budget per cycle (default: the server's)
  --sample-cycle-tokens N  the lane's rows x max_tokens per sampling call (default: the server's)
  --model NAME             base model (default lathe/tiny-qwen3)
  --models-dir DIR         where models live (default <repo>/.lathe/models)
`;

interface Stats { n: number; p50: number; p99: number; max: number }
function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  return { n: s.length, p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s[s.length - 1] ?? NaN };
}

async function main(): Promise<number> {
  const values = parseBenchArgs(USAGE, {
    steps: { type: 'string', default: '20' },
    'small-tokens': { type: 'string', default: '16' },
    'flood-runs': { type: 'string', default: '2' },
    window: { type: 'string', default: '8' },
    'flood-batch': { type: 'string', default: '8' },
    'flood-tokens': { type: 'string', default: '256' },
    'sample-n': { type: 'string', default: '128' },
    'sample-tokens': { type: 'string', default: '64' },
    'cycle-tokens': { type: 'string' },
    'sample-cycle-tokens': { type: 'string' },
  });
  if (values === undefined) return 0;
  const n = (name: keyof typeof values): number => Number(values[name]);
  const model = values.model;
  return withBenchServer({
      model,
      modelsDir: path.resolve(values['models-dir']),
      ordering: {
        ...(values['cycle-tokens'] ? { cycleTokens: n('cycle-tokens') } : {}),
        ...(values['sample-cycle-tokens'] ? { sampleCycleTokens: n('sample-cycle-tokens') } : {}),
      },
    }, async (bench) => {
    const lane = bench.server.services.lane(model);

    const small = await bench.tenant('small');
    const smallRun = await small.createRun();
    const smallData = [datum(n('small-tokens'))];
    /** B's timed steps: latency (ms) and cycles waited of each. */
    const smallSteps = async (): Promise<{ ms: number[]; cycles: number[] }> => {
      const ms: number[] = [];
      const cycles: number[] = [];
      for (let i = 0; i < n('steps'); i++) {
        const [start, c0] = [performance.now(), lane.cycles];
        for (const id of await smallRun.step(smallData)) await small.result(id);
        ms.push(performance.now() - start);
        cycles.push(lane.cycles - c0);
      }
      return { ms, cycles };
    };
    await smallSteps(); // warm-up
    const alone = await smallSteps();

    const flood = await bench.tenant('flood');
    const floodRuns = await Promise.all(Array.from({ length: n('flood-runs') }, () => flood.createRun()));
    const sampler = (await flood.post('create_sampling_session', { session_id: flood.sessionId, sampling_session_seq_id: 0, base_model: model, type: 'create_sampling_session' }))['sampling_session_id'];
    let flooding = true;
    let floodSteps = 0;
    let floodSamples = 0;
    const floodData = Array.from({ length: n('flood-batch') }, () => datum(n('flood-tokens')));
    const floodLoops = [
      ...floodRuns.map(async (run) => {
        const inFlight: unknown[] = [];
        while (flooding) {
          inFlight.push(...(await run.step(floodData)));
          while (inFlight.length >= n('window')) await flood.result(inFlight.shift());
          floodSteps++;
        }
        for (const id of inFlight) await flood.result(id);
      }),
      (async () => {
        while (flooding) {
          const submitted = await flood.post('asample', { sampling_session_id: sampler, num_samples: n('sample-n'), prompt: { chunks: [{ type: 'encoded_text', tokens: PROMPT }] }, sampling_params: { max_tokens: n('sample-tokens'), temperature: 1 }, type: 'sample' });
          await flood.result(submitted['request_id']);
          floodSamples++;
        }
      })(),
    ];
    while (lane.queued.training === 0) await new Promise((resolve) => setTimeout(resolve, 10)); // the flood is queued
    const loaded = await smallSteps();
    flooding = false;
    await Promise.all(floodLoops);

    const [a, l] = [stats(alone.ms), stats(loaded.ms)];
    const [ca, cl] = [stats(alone.cycles), stats(loaded.cycles)];
    const row = (name: string, s: Stats, c: Stats) => `  ${name.padEnd(7)} p50 ${s.p50.toFixed(1).padStart(8)} ms  p99 ${s.p99.toFixed(1).padStart(8)} ms  max ${s.max.toFixed(1).padStart(8)} ms  cycles waited p50 ${c.p50} p99 ${c.p99.toFixed(1)} max ${c.max}`;
    console.log(`small user's step (forward_backward of ${n('small-tokens')} tokens + optim_step), ${n('steps')} steps per phase:`);
    console.log(row('alone', a, ca));
    console.log(row('loaded', l, cl));
    console.log(`flood meanwhile: ${n('flood-runs')} runs x ${n('window')} in flight, ${floodSteps} steps of ${n('flood-batch')} x ${n('flood-tokens')} tokens; ${floodSamples} samples of ${n('sample-n')} x ${n('sample-tokens')} tokens`);
    const slowdown = { p50: l.p50 / a.p50, p99: l.p99 / a.p99 };
    console.log(`slowdown loaded / alone: p50 ${slowdown.p50.toFixed(2)}x, p99 ${slowdown.p99.toFixed(2)}x`);
    console.log(JSON.stringify({ bench: 'multi-tenant-latency', model, ratio: slowdown.p99, slowdown, alone: { ms: a, cycles: ca }, loaded: { ms: l, cycles: cl }, flood: { steps: floodSteps, samples: floodSamples } }));
    return 0;
  });
}

runBench(main);
