/**
 * @module store/runs
 * Training runs (one per training client). `model_id` is `{session_id}:train:{n}`, chosen by
 * the route (or by the SDK itself on the load-weights path), so creation is idempotent.
 */
import type { Kysely, Selectable } from 'kysely';
import { bit, fromBit, parseJson, StoreConflictError } from './db.js';
import type { Database, TrainingRunsTable } from './schema.js';

/** LoRA settings of a run. */
export interface LoraConfig {
  rank: number;
  seed: number | null;
  trainAttn: boolean;
  trainMlp: boolean;
  trainUnembed: boolean;
}

/**
 * Tinker's `OptimizerConfig`, normalised: `{type: 'adamw'}` or `{type: 'dimuon', version: 1}`.
 * Fixed when the run is created (docs/protocol.md §3.3).
 */
export type OptimizerConfig = { type: 'adamw' } | { type: 'dimuon'; version: 1 };

/** The optimizer of runs that name none (and of every run made before optimizers could be chosen). */
export const DEFAULT_OPTIMIZER: OptimizerConfig = { type: 'adamw' };

/** Lifecycle of a run's model on the workers. */
export type RunState = 'creating' | 'ready' | 'failed' | 'unloaded';

/** A training run as the API sees it. */
export interface RunRow {
  modelId: string;
  owner: string;
  sessionId: string;
  baseModel: string;
  loraRank: number;
  loraConfig: LoraConfig;
  userMetadata: Record<string, string>;
  createdAt: number;
  lastRequestAt: number;
  corrupted: boolean;
  state: RunState;
  optimizerConfig: OptimizerConfig;
  /** The server that holds the run's adapter (see `Services.serverId`); null for a run no server has adopted yet. */
  serverId: string | null;
}

/** Training run storage. */
export interface RunRepo {
  /**
   * Creates a run in state 'creating' with `createdAt = lastRequestAt = now`. A duplicate
   * `modelId` returns the existing row unchanged (idempotent create); one owned by someone else
   * throws `StoreConflictError`. The session must exist (foreign key). `optimizerConfig` defaults
   * to AdamW; `state` to 'creating' ('unloaded' for a run that only holds copied checkpoints).
   */
  create(r: Omit<RunRow, 'createdAt' | 'lastRequestAt' | 'corrupted' | 'state' | 'optimizerConfig' | 'serverId'> & { now: number; optimizerConfig?: OptimizerConfig; state?: RunState; serverId?: string }): Promise<RunRow>;
  /** The owner's run, or undefined. */
  get(modelId: string, owner: string): Promise<RunRow | undefined>;
  /** The owner's runs, newest first, and how many there are in all. */
  list(owner: string, limit: number, offset: number): Promise<{ runs: RunRow[]; total: number }>;
  /** Model ids of a session's runs, oldest first (caller checks session ownership). */
  listForSession(sessionId: string): Promise<string[]>;
  /** Records request activity: `lastRequestAt = now` (never moves backwards). */
  touch(modelId: string, now: number): Promise<void>;
  setState(modelId: string, state: RunState): Promise<void>;
  markCorrupted(modelId: string): Promise<void>;
}

function toRow(r: Selectable<TrainingRunsTable>): RunRow {
  return {
    modelId: r.model_id,
    owner: r.owner,
    sessionId: r.session_id,
    baseModel: r.base_model,
    loraRank: Number(r.lora_rank),
    loraConfig: parseJson<LoraConfig>(r.lora_config),
    userMetadata: parseJson<Record<string, string>>(r.user_metadata),
    createdAt: Number(r.created_at),
    lastRequestAt: Number(r.last_request_at),
    corrupted: fromBit(r.corrupted),
    state: r.state as RunState,
    optimizerConfig: r.optimizer_config === null ? DEFAULT_OPTIMIZER : parseJson<OptimizerConfig>(r.optimizer_config),
    serverId: r.server_id,
  };
}

export function createRunRepo(db: Kysely<Database>): RunRepo {
  return {
    async create(r) {
      const lora: LoraConfig = {
        rank: r.loraConfig.rank,
        seed: r.loraConfig.seed,
        trainAttn: r.loraConfig.trainAttn,
        trainMlp: r.loraConfig.trainMlp,
        trainUnembed: r.loraConfig.trainUnembed,
      };
      const inserted = await db
        .insertInto('training_runs')
        .values({
          model_id: r.modelId,
          owner: r.owner,
          session_id: r.sessionId,
          base_model: r.baseModel,
          lora_rank: r.loraRank,
          lora_config: JSON.stringify(lora),
          user_metadata: JSON.stringify(r.userMetadata),
          created_at: r.now,
          last_request_at: r.now,
          corrupted: bit(false),
          state: r.state ?? 'creating',
          optimizer_config: JSON.stringify(r.optimizerConfig ?? DEFAULT_OPTIMIZER),
          server_id: r.serverId ?? null,
        })
        .onConflict((oc) => oc.column('model_id').doNothing())
        .returningAll()
        .executeTakeFirst();
      const row = inserted ?? (await db.selectFrom('training_runs').selectAll().where('model_id', '=', r.modelId).executeTakeFirst());
      if (row === undefined) throw new Error(`runs.create: ${r.modelId} neither inserted nor found`);
      if (row.owner !== r.owner) throw new StoreConflictError(`model id ${r.modelId} belongs to another owner`);
      return toRow(row);
    },

    async get(modelId, owner) {
      const r = await db.selectFrom('training_runs').selectAll().where('model_id', '=', modelId).where('owner', '=', owner).executeTakeFirst();
      return r === undefined ? undefined : toRow(r);
    },

    async list(owner, limit, offset) {
      const [rows, count] = await Promise.all([
        db
          .selectFrom('training_runs')
          .selectAll()
          .where('owner', '=', owner)
          .orderBy('created_at', 'desc')
          .orderBy('model_id', 'desc')
          .limit(limit)
          .offset(offset)
          .execute(),
        db.selectFrom('training_runs').select((eb) => eb.fn.countAll<number>().as('n')).where('owner', '=', owner).executeTakeFirstOrThrow(),
      ]);
      return { runs: rows.map(toRow), total: Number(count.n) };
    },

    async listForSession(sessionId) {
      const rows = await db.selectFrom('training_runs').select('model_id').where('session_id', '=', sessionId).orderBy('created_at').orderBy('model_id').execute();
      return rows.map((r) => r.model_id);
    },

    async touch(modelId, now) {
      await db.updateTable('training_runs').set({ last_request_at: now }).where('model_id', '=', modelId).where('last_request_at', '<', now).execute();
    },

    async setState(modelId, state) {
      await db.updateTable('training_runs').set({ state }).where('model_id', '=', modelId).execute();
    },

    async markCorrupted(modelId) {
      await db.updateTable('training_runs').set({ corrupted: bit(true) }).where('model_id', '=', modelId).execute();
    },
  };
}
