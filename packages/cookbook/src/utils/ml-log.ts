/**
 * @module Run logging (the cookbook's `ml_log` JSON + pretty-print loggers): `config.json` once,
 * `metrics.jsonl` with one object per step (with a `step` field), and a readable console table.
 */
import { appendFileSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { LatheExtensions } from '@lathe/sdk';

/** One step's metrics by their standard names (`train_mean_nll`, `learning_rate`, `test/nll`, …). */
export type Metrics = Record<string, number>;

/** A line of `metrics.jsonl`. */
export type MetricsRecord = Metrics & { step: number };

/** Where console lines go (default `console.log`); tests pass a collector or a no-op. */
export type LineSink = (line: string) => void;

/**
 * Where metrics rows also go for the server's dashboard: a `LatheExtensions` client (or anything
 * with its `reportMetrics`).
 */
export type MetricsReporter = Pick<LatheExtensions, 'reportMetrics'>;

/**
 * Options of {@link MetricsLogger}.
 *
 * @example
 * const lathe = new LatheExtensions({ baseUrl, apiKey });
 * new MetricsLogger('runs/sft', { report: { to: lathe, modelId: () => training.modelId } });
 */
export interface MetricsLoggerOptions {
  /** Where the metrics table is printed (default `console.log`). */
  console?: LineSink;
  /**
   * Also send each row to run `modelId()`'s dashboard curves, in the background and best effort:
   * a failure goes to `onError` (default: one warning on stderr) and never stops training. Rows
   * logged while `modelId()` has no answer yet are not sent.
   */
  report?: { to: MetricsReporter; modelId: () => string | undefined; onError?: (error: unknown) => void };
}

/**
 * A training loop's logger options: its `console`, and dashboard reporting when `reportMetrics` is
 * set. `modelId` is asked only when a row is logged, once the loop's training client exists.
 *
 * @example
 * const logger = new MetricsLogger(logPath, loopLoggerOptions(config, () => training.modelId));
 */
export function loopLoggerOptions(config: { console?: LineSink; reportMetrics?: MetricsReporter }, modelId: () => string | undefined): MetricsLoggerOptions {
  return {
    ...(config.console === undefined ? {} : { console: config.console }),
    ...(config.reportMetrics === undefined ? {} : { report: { to: config.reportMetrics, modelId } }),
  };
}

/**
 * Writes a run's metrics under `logPath`.
 *
 * @example
 * const log = new MetricsLogger('runs/sft', { console: () => {} });
 * log.logConfig({ learningRate: 1e-4 });
 * log.logMetrics(0, { train_mean_nll: 2.3, learning_rate: 1e-4 });
 */
export class MetricsLogger {
  readonly logPath: string;
  readonly #console: LineSink;
  readonly #report: MetricsLoggerOptions['report'];
  /** The reports sent so far, one after another (so a step's rows arrive in order). */
  #reported: Promise<void> = Promise.resolve();
  #warned = false;

  constructor(logPath: string, options: MetricsLoggerOptions = {}) {
    this.logPath = logPath;
    this.#console = options.console ?? ((line) => console.log(line));
    this.#report = options.report;
    mkdirSync(logPath, { recursive: true });
  }

  get metricsFile(): string {
    return path.join(this.logPath, 'metrics.jsonl');
  }

  /** Writes `config.json` (replacing an earlier one). */
  logConfig(config: unknown): void {
    writeFileSync(path.join(this.logPath, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  }

  /** Appends one line to `metrics.jsonl` and prints the metrics as a table. */
  logMetrics(step: number, metrics: Metrics): void {
    appendJsonl(this.metricsFile, { step, ...metrics });
    this.#console(formatMetricsTable(step, metrics));
    this.#send(step, metrics);
  }

  /**
   * Resolves once every row logged so far has been reported (or its report has failed); never rejects.
   *
   * @example
   * logger.logMetrics(3, { train_mean_nll: 1.2 });
   * await logger.flushReports();
   */
  flushReports(): Promise<void> {
    return this.#reported;
  }

  #send(step: number, metrics: Metrics): void {
    const report = this.#report;
    if (report === undefined) return;
    const onError = report.onError ?? ((error: unknown) => this.#warnOnce(error));
    this.#reported = this.#reported.then(async () => {
      try {
        const modelId = report.modelId();
        if (modelId !== undefined) await report.to.reportMetrics(modelId, [{ step, metrics }]);
      } catch (error) {
        onError(error);
      }
    });
  }

  #warnOnce(error: unknown): void {
    if (this.#warned) return;
    this.#warned = true;
    console.error(`metrics are not reaching the dashboard (training goes on): ${error instanceof Error ? error.message : String(error)}`);
  }

  /** Drops the records of `step` and later, so a resumed run does not log a step twice. */
  truncateFrom(step: number): void {
    if (!existsSync(this.metricsFile)) return;
    const kept = readMetrics(this.logPath).filter((r) => r.step < step);
    writeFileSync(this.metricsFile, kept.map((r) => `${JSON.stringify(r)}\n`).join(''));
  }
}

/**
 * The same metrics under prefixed names (`optim/`, `test/`, …).
 *
 * @example
 * prefixMetrics('test/', { accuracy: 1 }); // { 'test/accuracy': 1 }
 */
export function prefixMetrics(prefix: string, metrics: Readonly<Record<string, number>>): Metrics {
  return Object.fromEntries(Object.entries(metrics).map(([k, v]) => [`${prefix}${k}`, v]));
}

/** The records of `{logPath}/metrics.jsonl` (empty if there is none). */
export function readMetrics(logPath: string): MetricsRecord[] {
  return readJsonl<MetricsRecord>(path.join(logPath, 'metrics.jsonl'));
}

/**
 * Appends one JSON line. A cut-off last line left by a killed process is dropped first, so the new
 * record starts a line of its own.
 */
export function appendJsonl(file: string, record: unknown): void {
  if (existsSync(file)) {
    const size = statSync(file).size;
    if (size > 0 && lastByte(file, size) !== 0x0a) {
      const text = readFileSync(file);
      truncateSync(file, text.lastIndexOf(0x0a) + 1);
    }
  }
  appendFileSync(file, `${JSON.stringify(record)}\n`);
}

function lastByte(file: string, size: number): number {
  const fd = openSync(file, 'r');
  try {
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, size - 1);
    return byte[0]!;
  } finally {
    closeSync(fd);
  }
}

/**
 * Parses a JSONL file; a missing file has no records. A cut-off last line (a process killed while
 * appending it) is skipped; a bad line elsewhere is an error naming it.
 */
export function readJsonl<T>(file: string): T[] {
  if (!existsSync(file)) return [];
  const lines = readFileSync(file, 'utf8').split('\n');
  const records: T[] = [];
  lines.forEach((line, index) => {
    if (line.trim() === '') return;
    try {
      records.push(JSON.parse(line) as T);
    } catch (error) {
      const unterminated = index === lines.length - 1; // no newline after it: the append was cut short
      if (!unterminated) throw new SyntaxError(`${file} line ${index + 1}: not JSON (${(error as Error).message})`);
    }
  });
  return records;
}

/**
 * A two-column table of one step's metrics, names sorted.
 *
 * @example
 * formatMetricsTable(3, { train_mean_nll: 1.25 });
 * // ┌ step 3 ─────────┐ … │ train_mean_nll │ 1.25 │ …
 */
export function formatMetricsTable(step: number, metrics: Metrics): string {
  const rows = Object.keys(metrics)
    .sort()
    .map((name) => [name, formatNumber(metrics[name]!)] as const);
  const nameWidth = Math.max(6, ...rows.map(([n]) => n.length));
  const valueWidth = Math.max(5, ...rows.map(([, v]) => v.length));
  const rule = (left: string, mid: string, right: string): string => `${left}${'─'.repeat(nameWidth + 2)}${mid}${'─'.repeat(valueWidth + 2)}${right}`;
  const title = ` step ${step} `;
  const top = `┌${title}${'─'.repeat(Math.max(0, nameWidth + valueWidth + 5 - title.length))}┐`;
  const lines = rows.map(([name, value]) => `│ ${name.padEnd(nameWidth)} │ ${value.padStart(valueWidth)} │`);
  return [top, ...lines, rule('└', '┴', '┘')].join('\n');
}

function formatNumber(value: number): string {
  if (Number.isInteger(value)) return String(value);
  const magnitude = Math.abs(value);
  return magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e6) ? value.toExponential(3) : value.toFixed(4);
}
