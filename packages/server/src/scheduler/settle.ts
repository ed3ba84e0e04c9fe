/**
 * @module How a lane settles its jobs: a worker's reply becomes the future's result or failure, a
 * failure the store cannot record is logged (the lane goes on), and a job the worker lost is tried
 * again a few times before it fails.
 */
import type { Logger } from '../log.js';
import { asJobError, type Completion, type JobError } from './jobs.js';

/** A job interrupted by a worker crash is tried this many times before it fails. */
const MAX_ATTEMPTS = 3;

/** What {@link JobSettler.finish} needs of a job. */
export interface Settleable {
  requestId: string;
  finalize: (reply: Record<string, unknown>) => Promise<unknown>;
}

/**
 * @example
 * const settle = new JobSettler(completion, log);
 * await settle.finish(job, reply);          // reply.ok === false: the job fails with the worker's error
 * if (!settle.retryable(job.requestId)) await settle.fail(job.requestId, error);
 */
export class JobSettler {
  private readonly attempts = new Map<string, number>();

  constructor(
    private readonly completion: Completion,
    private readonly log: Logger,
  ) {}

  /** Records the outcome of a worker reply (`ok`, else its `error`) through the job's `finalize`. */
  async finish(job: Settleable, result: Record<string, unknown>): Promise<void> {
    if (result['ok'] !== true) {
      const error = (result['error'] ?? {}) as { message?: string; category?: string };
      await this.fail(job.requestId, {
        message: error.message ?? 'the worker failed this request',
        category: error.category === 'user' ? 'user' : 'server',
      });
      return;
    }
    try {
      await this.completion.complete(job.requestId, await job.finalize(result));
    } catch (error) {
      await this.fail(job.requestId, asJobError(error));
    }
  }

  /**
   * Records a job's failure. A store that cannot record it must not stop the lane: the error is
   * logged and the lane goes on with the next job (that future stays pending).
   */
  async fail(requestId: string, error: JobError): Promise<void> {
    try {
      await this.completion.fail(requestId, error);
    } catch (storeError) {
      this.log.error({ err: storeError, requestId }, `could not record the failure of ${requestId}`);
    }
  }

  /** Counts one more attempt of a job the worker lost; whether it may be tried again. */
  retryable(requestId: string): boolean {
    const attempts = (this.attempts.get(requestId) ?? 0) + 1;
    this.attempts.set(requestId, attempts);
    return attempts < MAX_ATTEMPTS;
  }

  /** The job is not to be tried again (its next {@link retryable} says no). */
  noRetry(requestId: string): void {
    this.attempts.set(requestId, MAX_ATTEMPTS);
  }

  /** The job left the queue: forget its attempts. */
  forget(requestId: string): void {
    this.attempts.delete(requestId);
  }
}
