/**
 * @module store/schema
 * The Kysely `Database` interface: one entry per table, columns in snake_case exactly as
 * created by `migrations.ts`. The repositories map these rows to the camelCase row types of
 * the public API.
 *
 * Portable column conventions (both SQLite and PostgreSQL):
 * - ids are TEXT;
 * - times are epoch milliseconds, INTEGER in SQLite and BIGINT in PostgreSQL (the PG pool is
 *   configured to parse int8 as a JS number, see `db.ts`);
 * - booleans are INTEGER 0/1;
 * - JSON values are TEXT holding JSON, parsed by the repositories;
 * - binary payloads are BLOB (SQLite) / BYTEA (PostgreSQL), read back as `Uint8Array`.
 */
import type { Generated } from 'kysely';


/** 0 or 1: booleans are stored as integers in both dialects. */
export type Bit = 0 | 1;

/** `api_keys`: API keys. Only the SHA-256 (hex) of a key is stored, never the key. */
export interface ApiKeysTable {
  id: string;
  name: string;
  key_hash: string;
  /** The 8 characters after the key's `tml-` (null for keys made before they were recorded). */
  prefix: string | null;
  created_at: number;
  revoked_at: number | null;
}

/** `sessions`: one row per SDK session (`create_session`). */
export interface SessionsTable {
  session_id: string;
  owner: string;
  /** JSON `string[]`. */
  tags: string;
  /** JSON object. */
  user_metadata: string;
  sdk_version: string;
  project_id: string | null;
  created_at: number;
  last_heartbeat_at: number;
  finished_at: number | null;
}

/** `training_runs`: one row per training client (`model_id = {session_id}:train:{n}`). */
export interface TrainingRunsTable {
  model_id: string;
  owner: string;
  session_id: string;
  base_model: string;
  lora_rank: number;
  /** JSON `{rank, seed, trainAttn, trainMlp, trainUnembed}`. */
  lora_config: string;
  /** JSON `{[k: string]: string}`. */
  user_metadata: string;
  created_at: number;
  last_request_at: number;
  corrupted: Bit;
  state: string;
  /** JSON `OptimizerConfig` (`{"type": "adamw"}` or `{"type": "dimuon", "version": 1}`); null = AdamW (migration 4). */
  optimizer_config: string | null;
  /** The server whose worker holds the run's adapter (migration 5); null only until a server adopts it. */
  server_id: string | null;
}

/** `requests`: the request (future) log. `(target, seq_id)` is unique; NULL seq ids never collide. */
export interface RequestsTable {
  request_id: string;
  owner: string;
  target: string;
  seq_id: number | null;
  kind: string;
  status: string;
  payload: Uint8Array | null;
  result: Uint8Array | null;
  /** JSON `{message, category}`. */
  error: string | null;
  created_at: number;
  completed_at: number | null;
  /** The server that accepted the request and runs it, also after its restart (migration 5). */
  server_id: string | null;
}

/** `checkpoints`: saved weights; primary key `(model_id, checkpoint_id)`, `tinker_path` unique. */
export interface CheckpointsTable {
  model_id: string;
  checkpoint_id: string;
  owner: string;
  checkpoint_type: string;
  tinker_path: string;
  storage_path: string;
  size_bytes: number;
  public: Bit;
  created_at: number;
  expires_at: number | null;
  ephemeral: Bit;
  /** JSON `{[k: string]: string}` given at save time, or null (migration 4). */
  user_metadata: string | null;
}

/** `samplers`: sampling sessions. */
export interface SamplersTable {
  sampler_id: string;
  owner: string;
  session_id: string;
  base_model: string;
  model_path: string | null;
  created_at: number;
  /** The last client counter handed out by `join_sampling_session` (migration 3). */
  client_counter: Generated<number>;
}

/**
 * `run_metrics`: the dashboard's metric points of a run (migration 6). `source` 'server' rows are
 * recorded from the request log (one per completed forward_backward / optim_step, `seq` = its seq
 * id); 'client' rows are the metrics a client reports (`seq` = its step; a re-sent step replaces).
 */
export interface RunMetricsTable {
  /** Increasing over all rows: the `?after=` cursor. */
  id: Generated<number>;
  model_id: string;
  source: string;
  seq: number;
  kind: string;
  /** Optimizer steps applied before this point (server rows), or the client's step. */
  step: number;
  /** Tokens the forward_backward trained on (0 for other rows). */
  tokens: number;
  /** JSON `{[name: string]: number}`. */
  metric_values: string;
  recorded_at: number;
}

/** `schema_migrations`: one row per applied migration. */
export interface SchemaMigrationsTable {
  version: number;
  name: string;
  applied_at: number;
}

/** The whole schema, as seen by `Kysely<Database>`. */
export interface Database {
  api_keys: ApiKeysTable;
  sessions: SessionsTable;
  training_runs: TrainingRunsTable;
  requests: RequestsTable;
  checkpoints: CheckpointsTable;
  samplers: SamplersTable;
  run_metrics: RunMetricsTable;
  schema_migrations: SchemaMigrationsTable;
}
