/**
 * @module SDK data types: rEST listings: checkpoints, training runs, sessions and samplers.
 */
/**
 * A saved checkpoint. `checkpointId` is `weights/<name>`, `sampler_weights/<name>` or `external_weights/<name>`.
 *
 * @example
 * const { checkpoints } = await rest.listCheckpoints(training.modelId);
 * checkpoints.map((c) => c.tinkerPath);
 */
export interface Checkpoint {
  checkpointId: string;
  /** `external`: a Hugging Face PEFT adapter from `saveWeightsExternal`. */
  checkpointType: 'training' | 'sampler' | 'external';
  /** ISO-8601 creation time. */
  time: string;
  tinkerPath: string;
  sizeBytes: number | undefined;
  public: boolean;
  /** ISO-8601 expiry, when a TTL is set. */
  expiresAt: string | undefined;
  /** What was attached at save time. */
  userMetadata: Record<string, string> | undefined;
}

/**
 * A training run (one LoRA adapter being trained).
 *
 * @example
 * const run = await rest.getTrainingRun(training.modelId);
 * run.baseModel; run.lastCheckpoint?.tinkerPath;
 */
export interface TrainingRun {
  trainingRunId: string;
  baseModel: string;
  modelOwner: string;
  isLora: boolean;
  corrupted: boolean;
  loraRank: number | undefined;
  /** ISO-8601. */
  lastRequestTime: string;
  lastCheckpoint: Checkpoint | undefined;
  lastSamplerCheckpoint: Checkpoint | undefined;
  userMetadata: Record<string, string> | undefined;
}

/**
 * Where a page sits in a list.
 *
 * @example
 * const { cursor } = await rest.listTrainingRuns({ limit: 10 });
 * const more = cursor.offset + cursor.limit < cursor.totalCount;
 */
export interface Cursor {
  offset: number;
  limit: number;
  totalCount: number;
}

/**
 * One page of training runs.
 *
 * @example
 * const page = await rest.listTrainingRuns({ limit: 20, offset: 0 });
 */
export interface TrainingRunsResponse {
  trainingRuns: TrainingRun[];
  cursor: Cursor;
}

/**
 * A list of checkpoints (one page for `listUserCheckpoints`; all of a run's for `listCheckpoints`).
 *
 * @example
 * const { checkpoints, cursor } = await rest.listUserCheckpoints({ limit: 50 });
 */
export interface CheckpointsListResponse {
  checkpoints: Checkpoint[];
  cursor: Cursor | undefined;
}

/**
 * A signed, expiring download link for a checkpoint archive (a tar of the PEFT adapter).
 *
 * @example
 * const { url, expires } = await rest.getCheckpointArchiveUrlFromTinkerPath(path);
 */
export interface CheckpointArchiveUrlResponse {
  url: string;
  /** ISO-8601. */
  expires: string;
}

/**
 * What a session holds.
 *
 * @example
 * const { trainingRunIds } = await rest.getSession(sessionId);
 */
export interface GetSessionResponse {
  trainingRunIds: string[];
  samplerIds: string[];
  /** The session's metadata (`ClientOptions.userMetadata`). */
  userMetadata: Record<string, string> | undefined;
}

/**
 * One page of session ids.
 *
 * @example
 * const { sessions } = await rest.listSessions({ limit: 10 });
 */
export interface ListSessionsResponse {
  sessions: string[];
}

/**
 * A sampling session.
 *
 * @example
 * const s = await rest.getSampler(samplerId);
 * s.baseModel; s.modelPath;
 */
export interface GetSamplerResponse {
  samplerId: string;
  baseModel: string;
  modelPath: string | undefined;
}

/**
 * Which runs a listing covers: those of this key, or all this key may read.
 *
 * @example
 * rest.listTrainingRuns({ accessScope: 'accessible' });
 */
export type AccessScope = 'owned' | 'accessible';
