/**
 * @module A training progress line on stderr: step/total, a metric (loss, reward) and ETA; redrawn in place on a
 * terminal, one plain line per step otherwise (logs, pipes, tests).
 */

/** Where progress goes: a stream that may be a terminal. */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
}

/**
 * Tracks a run's steps and prints its progress.
 *
 * @example
 * const progress = new ProgressBar(process.stderr, 100, 0);
 * progress.update(1, 2.31); // [#---------]   1/100  loss 2.3100  ETA 0:42
 * progress.done();
 */
export class ProgressBar {
  readonly #stream: ProgressStream;
  readonly #total: number;
  readonly #firstStep: number;
  readonly #metric: string;
  readonly #startedAt = performance.now();
  #drawn = false;

  /**
   * `firstStep`: the steps done before this process (a resumed run), left out of the ETA's rate;
   * `metric`: the name shown before each step's value.
   */
  constructor(stream: ProgressStream, total: number, firstStep: number, metric = 'loss') {
    this.#stream = stream;
    this.#total = total;
    this.#firstStep = firstStep;
    this.#metric = metric;
  }

  /** Reports that `done` steps of the total are done, the last with `value` of the metric (the training loss by default). */
  update(done: number, value: number): void {
    const width = 20;
    const filled = Math.round((width * done) / this.#total);
    const bar = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
    const steps = `${String(done).padStart(String(this.#total).length)}/${this.#total}`;
    const line = `${bar} ${steps}  ${this.#metric} ${value.toFixed(4)}  ETA ${formatDuration(this.#eta(done))}`;
    if (this.#stream.isTTY === true) {
      this.#stream.write(`\r\x1b[2K${line}`);
      this.#drawn = true;
    } else {
      this.#stream.write(`${line}\n`);
    }
  }

  /** Ends the redrawn line, so what is printed next starts on a line of its own. */
  done(): void {
    if (this.#drawn) this.#stream.write('\n');
    this.#drawn = false;
  }

  #eta(done: number): number {
    const stepsHere = done - this.#firstStep;
    if (stepsHere <= 0) return Number.NaN;
    return (((performance.now() - this.#startedAt) / stepsHere) * (this.#total - done)) / 1000;
  }
}

/** `m:ss` (or `h:mm:ss`); `?` when unknown. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  const [h, m, r] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  const pad = (n: number): string => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
}
