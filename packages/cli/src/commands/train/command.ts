/**
 * @module The action of every `lathe train` command: Ctrl-C handling (the first stops the run with
 * a checkpoint, a second quits at once), the outcome on stdout/stderr and the exit code.
 */
import type { TrainCommonOptions, TrainResult } from './run.js';

/** What the action supplies to every recipe (the rest of its options are flags). */
export type Supplied = Pick<TrainCommonOptions, 'signal' | 'progress' | 'log'>;

/** A recipe's flags: its options without what the action supplies. */
export type TrainFlags<Options extends TrainCommonOptions> = Omit<Options, keyof Supplied>;

/**
 * Runs a `lathe train` recipe with `flags`: progress and status on stderr, `done: …` with the final
 * sampler weights on stdout, exit code 130 after Ctrl-C (with the checkpoint to resume from).
 * Errors are the caller's to report.
 *
 * @example
 * .action((flags: TrainFlags<TrainRlOptions>) => runTrainCommand(runTrainRl, flags));
 */
export async function runTrainCommand<Options extends TrainCommonOptions>(run: (options: TrainFlags<Options> & Supplied) => Promise<TrainResult>, flags: TrainFlags<Options>): Promise<void> {
  const stop = new AbortController();
  const onInterrupt = (): void => {
    if (stop.signal.aborted) process.exit(130);
    console.error('\nstopping after the steps in flight and saving a checkpoint (Ctrl-C again to quit without one)');
    stop.abort();
  };
  process.on('SIGINT', onInterrupt);
  try {
    const result = await run({ ...flags, signal: stop.signal, progress: process.stderr, log: (line: string) => console.error(line) });
    if (result.interrupted) {
      console.error(`stopped at step ${result.steps}/${result.totalSteps}${result.checkpoint ? `; checkpoint ${result.checkpoint.state_path}` : ''}; run the same command again to resume`);
      process.exitCode = 130;
    } else {
      console.log(`done: ${result.steps} steps; sampler weights ${result.checkpoint?.sampler_path ?? '(none)'}`);
    }
  } finally {
    process.off('SIGINT', onInterrupt);
  }
}
