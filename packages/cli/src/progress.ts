/**
 * @module Progress lines on stderr: training (step/total, the run's headline metric — loss, reward,
 * KL… — and ETA) and downloads (bytes, rate and ETA); redrawn in place on a terminal, plain lines
 * otherwise (logs, pipes, tests).
 */
import { formatBytes } from './table.js';

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
 * new ProgressBar(process.stderr, 20, 0, 'reward').update(1, 0.25); // [#---------]  1/20  reward 0.2500  ETA 0:19
 */
export class ProgressBar {
  readonly #stream: ProgressStream;
  readonly #total: number;
  readonly #firstStep: number;
  readonly #label: string;
  readonly #startedAt = performance.now();
  #drawn = false;

  /**
   * `firstStep`: the steps done before this process (a resumed run), left out of the ETA's rate;
   * `label`: the name shown before each step's value.
   */
  constructor(stream: ProgressStream, total: number, firstStep: number, label = 'loss') {
    this.#stream = stream;
    this.#total = total;
    this.#firstStep = firstStep;
    this.#label = label;
  }

  /** Reports that `done` steps of the total are done, the last with headline metric `value`. */
  update(done: number, value: number): void {
    const steps = `${String(done).padStart(String(this.#total).length)}/${this.#total}`;
    const line = `${bar(done / this.#total)} ${steps}  ${this.#label} ${value.toFixed(4)}  ETA ${formatDuration(this.#eta(done))}`;
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

/** `[#####---------------]` for a fraction in [0, 1]. */
function bar(fraction: number): string {
  const width = 20;
  const filled = Math.round(width * Math.min(1, Math.max(0, fraction)));
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}

/**
 * Progress of a download in bytes: bar, done/total, rate and ETA. On a terminal one line is
 * redrawn (at most ten times a second); elsewhere a plain line is printed at each tenth of the total and at the end.
 *
 * @example
 * const progress = new DownloadProgress(process.stderr, 'acme/model', 5_000_000, 0);
 * progress.update(2_500_000); // acme/model [##########----------] 2.50 MB/5.00 MB  1.2 MB/s  ETA 0:02
 * progress.done();
 */
export class DownloadProgress {
  readonly #stream: ProgressStream;
  readonly #label: string;
  readonly #total: number;
  readonly #startBytes: number;
  readonly #startedAt = performance.now();
  #lastTenth = -1;
  #lastDraw = Number.NEGATIVE_INFINITY;
  #drawn = false;

  /** `startBytes`: bytes already on disk before this process (a resumed download), left out of the rate. */
  constructor(stream: ProgressStream, label: string, total: number, startBytes: number) {
    this.#stream = stream;
    this.#label = label;
    this.#total = total;
    this.#startBytes = startBytes;
  }

  /** Reports `done` bytes of the total on disk. */
  update(done: number): void {
    const seconds = (performance.now() - this.#startedAt) / 1000;
    const rate = seconds > 0 ? (done - this.#startBytes) / seconds : Number.NaN;
    const eta = rate > 0 ? (this.#total - done) / rate : Number.NaN;
    const line = `${this.#label} ${bar(this.#total > 0 ? done / this.#total : 1)} ${formatBytes(done)}/${formatBytes(this.#total)}  ${Number.isFinite(rate) ? `${formatBytes(rate)}/s` : '?'}  ETA ${formatDuration(eta)}`;
    if (this.#stream.isTTY === true) {
      // Chunks arrive far faster than anyone reads: redraw ten times a second, and at the end.
      const now = performance.now();
      if (now - this.#lastDraw < 100 && done < this.#total) return;
      this.#lastDraw = now;
      this.#stream.write(`\r\x1b[2K${line}`);
      this.#drawn = true;
      return;
    }
    const tenth = this.#total > 0 ? Math.floor((10 * done) / this.#total) : 10;
    if (tenth === this.#lastTenth) return;
    this.#lastTenth = tenth;
    this.#stream.write(`${line}\n`);
  }

  /** Ends the redrawn line. */
  done(): void {
    if (this.#drawn) this.#stream.write('\n');
    this.#drawn = false;
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
