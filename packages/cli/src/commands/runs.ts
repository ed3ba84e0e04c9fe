/**
 * @module `lathe runs list|show`: this key's training runs and their checkpoints.
 */
import type { Checkpoint, TrainingRun } from '@lathe/sdk';
import { formatTable, take } from '../table.js';
import { checkpointsTable } from './checkpoints.js';
import { withService, type ConnectOptions } from './connect.js';

/** Options of {@link listRuns}. */
export interface ListRunsOptions extends ConnectOptions {
  /** Most runs to return, newest first. */
  limit: number;
  log: (line: string) => void;
}

/**
 * This key's training runs, newest first (at most `limit`).
 *
 * @example
 * const runs = await listRuns({ baseUrl: 'http://127.0.0.1:8000', apiKey: 'tml-...', dataDir: '.lathe', limit: 20, log: console.error });
 * runs[0]?.trainingRunId;
 */
export async function listRuns(options: ListRunsOptions): Promise<TrainingRun[]> {
  return withService(options, options.log, (service) => take(service.createRestClient().iterTrainingRuns({ limit: Math.min(options.limit, 100) }), options.limit));
}

/** A run and every checkpoint it has (see {@link showRun}). */
export interface RunDetails {
  run: TrainingRun;
  checkpoints: Checkpoint[];
}

/**
 * One training run with all its checkpoints.
 *
 * @example
 * const { run, checkpoints } = await showRun({ dataDir: '.lathe', runId: 'S:train:0', log: console.error });
 */
export async function showRun(options: ConnectOptions & { runId: string; log: (line: string) => void }): Promise<RunDetails> {
  return withService(options, options.log, async (service) => {
    const rest = service.createRestClient();
    const run = await rest.getTrainingRun(options.runId);
    const { checkpoints } = await rest.listCheckpoints(options.runId);
    return { run, checkpoints };
  });
}

/**
 * The runs as a table: id, base model, LoRA rank, last request, last checkpoint.
 *
 * @example
 * console.log(runsTable(await listRuns(options)));
 */
export function runsTable(runs: readonly TrainingRun[]): string {
  if (runs.length === 0) return 'no training runs';
  return formatTable([
    ['RUN', 'BASE MODEL', 'RANK', 'LAST REQUEST', 'LAST CHECKPOINT'],
    ...runs.map((r) => [r.trainingRunId, r.baseModel, String(r.loraRank ?? '-'), r.lastRequestTime || '-', r.lastCheckpoint?.tinkerPath ?? r.lastSamplerCheckpoint?.tinkerPath ?? '-']),
  ]);
}

/**
 * A run's fields, one per line, then its checkpoints.
 *
 * @example
 * console.log(formatRunDetails(await showRun(options)));
 */
export function formatRunDetails({ run, checkpoints }: RunDetails): string {
  const fields: [string, string][] = [
    ['run', run.trainingRunId],
    ['base model', run.baseModel],
    ['LoRA rank', String(run.loraRank ?? '-')],
    ['last request', run.lastRequestTime || '-'],
    ['corrupted', run.corrupted ? 'yes' : 'no'],
    ...Object.entries(run.userMetadata ?? {}).map(([k, v]): [string, string] => [`metadata ${k}`, v]),
  ];
  const width = Math.max(...fields.map(([name]) => name.length));
  return `${fields.map(([name, value]) => `${`${name}:`.padEnd(width + 2)}${value}`).join('\n')}\n\n${checkpointsTable(checkpoints)}`;
}
