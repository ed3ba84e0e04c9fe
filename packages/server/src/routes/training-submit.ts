/**
 * @module How the training and checkpoint routes find a run and submit a request to it, so that a
 * refusal once the run and `seq_id` are known still takes that `seq_id`'s place.
 */
import { HttpError, notFound } from '../http/errors.js';
import type { TrainingOp } from '../scheduler/lane.js';
import type { JobMeta, Services } from '../services.js';
import type { RunRow } from '../store/index.js';
import { owner } from './context.js';

/** What a training request runs (`op`) and how its result is recorded (`meta`). */
export interface TrainingJob {
  op: TrainingOp;
  meta: JobMeta;
}

/** The caller's training run `modelId`, or a 404. */
export async function findRun(services: Services, request: { owner: string | null }, modelId: string): Promise<RunRow> {
  const found = await services.store.runs.get(modelId, owner(request as never));
  if (!found) throw notFound('training run', modelId);
  return found;
}

/**
 * Submits a training request whose op `build` checks and makes. Once the run and `seq_id` are
 * known, a refusal (a 4xx from `build`) still takes that `seq_id`'s place in the run's order,
 * as the SDK has used it up (see `Services.refuseTraining`): later requests do not wait for it.
 */
export async function submitCheckedTraining(
  services: Services,
  request: { owner: string | null },
  found: RunRow,
  seqId: number,
  kind: JobMeta['kind'],
  build: () => Promise<TrainingJob> | TrainingJob,
): Promise<{ request_id: string; model_id: string }> {
  const who = owner(request as never);
  let job: TrainingJob;
  try {
    job = await build();
  } catch (error) {
    if (!(error instanceof HttpError) || error.statusCode >= 500) throw error;
    return { request_id: await services.refuseTraining(who, found, seqId, kind, error), model_id: found.modelId };
  }
  return { request_id: await services.submitTraining(who, found, seqId, job.op, job.meta), model_id: found.modelId };
}

/**
 * {@link findRun} and {@link submitCheckedTraining} bound to the server's services, as the routes call them.
 *
 * @example
 * const { run, submitChecked } = trainingSubmitter(services);
 * const found = await run(request, body.model_id);
 */
export function trainingSubmitter(services: Services) {
  return {
    run: (request: { owner: string | null }, modelId: string): Promise<RunRow> => findRun(services, request, modelId),
    submitChecked: (request: { owner: string | null }, found: RunRow, seqId: number, kind: JobMeta['kind'], build: () => Promise<TrainingJob> | TrainingJob) =>
      submitCheckedTraining(services, request, found, seqId, kind, build),
  };
}
