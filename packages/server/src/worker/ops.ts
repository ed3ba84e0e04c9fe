/**
 * @module What the server asks a worker to do: the training ops a run logs, and the one mapping
 * from an op to its worker request. The live lane and crash-recovery replay both send
 * {@link toWorkerRequest}'s output, so a replayed step is the very request the run first made.
 */
import type { WorkerDevice } from './remote.js';
import type { WireTensor } from './tensor.js';

/** A datum as the worker takes it. */
export interface WorkerDatum {
  tokens: WireTensor;
  loss_fn_inputs: Record<string, WireTensor>;
}

/**
 * What a training request asks the worker to do. `optimizer` is the run's optimizer config (absent
 * in requests logged before optimizers could be chosen: AdamW); an optimizer step carries the
 * parameters of exactly one family.
 */
export type TrainingOp =
  | { kind: 'create_adapter'; lora: Record<string, unknown>; optimizer?: Record<string, unknown> }
  | { kind: 'forward_backward' | 'forward'; lossFn: string; lossFnConfig: Record<string, number>; data: WorkerDatum[] }
  | { kind: 'optim_step'; adamParams?: Record<string, number>; optimizerParams?: Record<string, unknown> }
  | { kind: 'save_adapter'; path: string; includeOptimizer: boolean }
  | { kind: 'load_adapter'; path: string; includeOptimizer: boolean; optimizer?: Record<string, unknown> }
  | { kind: 'export_peft'; path: string; naming: 'peft' | 'tinker' }
  | { kind: 'drop_adapter' };

/** A forward pass over one adapter's data: one item of a (batched) forward(_backward) call. */
export type ForwardOp = Extract<TrainingOp, { lossFn: string }>;

/** One adapter's part of a forward(_backward) call. */
export interface ForwardItem {
  adapter: string;
  loss_fn: string;
  loss_fn_config: Record<string, number>;
  data: WorkerDatum[];
}

/** One item's outcome in a batched reply (forward passes, sampling). */
export type ItemResult = Record<string, unknown> & { ok?: boolean; error?: { message?: string; category?: string } };

type Fields = Record<string, unknown>;
type Reply = Record<string, unknown>;

/**
 * The fields and reply of every op the server sends (the worker's `protocol.py` has them all).
 * {@link WorkerClient.request} checks calls against this table.
 */
export interface WorkerCalls {
  hello: { fields: Fields; reply: { devices?: WorkerDevice[] } };
  load_model: { fields: { model: string }; reply: Reply };
  forward_backward: { fields: { items: ForwardItem[] }; reply: { results: ItemResult[] } };
  forward: { fields: { items: ForwardItem[] }; reply: { results: ItemResult[] } };
  sample: { fields: { items: Fields[] }; reply: { results: ItemResult[] } };
  create_adapter: { fields: { adapter: string; lora: Fields; optimizer?: Fields }; reply: Reply };
  optim_step: { fields: { adapter: string; adam_params?: Record<string, number>; optimizer_params?: Fields }; reply: { metrics?: Record<string, number> } };
  save_adapter: { fields: { adapter: string; path: string; include_optimizer: boolean }; reply: { bytes?: number } };
  load_adapter: { fields: { adapter: string; path: string; include_optimizer: boolean; optimizer?: Fields }; reply: Reply };
  /** From a live adapter (`adapter`) or a saved checkpoint folder (`source`). */
  export_peft: { fields: { path: string; adapter?: string; source?: string; naming?: 'peft' | 'tinker' }; reply: Reply };
  drop_adapter: { fields: { adapter: string }; reply: Reply };
  snapshot: { fields: { adapter: string; path: string }; reply: Reply };
  stats: { fields: Fields; reply: Reply };
  shutdown: { fields: Fields; reply: Reply };
}

/** An op name in {@link WorkerCalls}. */
export type WorkerOp = keyof WorkerCalls;

/** A worker request for op `K`: what {@link toWorkerRequest} returns. */
export type WorkerRequest<K extends WorkerOp = WorkerOp> = { [P in K]: { op: P; fields: WorkerCalls[P]['fields'] } }[K];

/** The item of a forward pass of `adapter`, as batched with other runs' items in one call. */
export function forwardItem(adapter: string, op: ForwardOp): ForwardItem {
  return { adapter, loss_fn: op.lossFn, loss_fn_config: op.lossFnConfig, data: op.data };
}

/**
 * The worker request of one training op of the run whose adapter is `adapter`. A forward pass is a
 * one-item batch (the lane batches several runs' {@link forwardItem}s into one call instead).
 *
 * @example
 * const { op, fields } = toWorkerRequest('S:train:0', { kind: 'optim_step', adamParams: { learning_rate: 1e-4 } });
 * await client.request(op, fields); // optim_step { adapter: 'S:train:0', adam_params: { learning_rate: 1e-4 } }
 */
export function toWorkerRequest(adapter: string, op: TrainingOp): WorkerRequest<TrainingOp['kind']> {
  switch (op.kind) {
    case 'forward_backward':
    case 'forward':
      return { op: op.kind, fields: { items: [forwardItem(adapter, op)] } };
    case 'create_adapter':
      return { op: op.kind, fields: { adapter, lora: op.lora, ...(op.optimizer ? { optimizer: op.optimizer } : {}) } };
    case 'optim_step':
      return { op: op.kind, fields: { adapter, ...(op.optimizerParams ? { optimizer_params: op.optimizerParams } : { adam_params: op.adamParams ?? {} }) } };
    case 'save_adapter':
      return { op: op.kind, fields: { adapter, path: op.path, include_optimizer: op.includeOptimizer } };
    case 'load_adapter':
      return { op: op.kind, fields: { adapter, path: op.path, include_optimizer: op.includeOptimizer, ...(op.optimizer ? { optimizer: op.optimizer } : {}) } };
    case 'export_peft':
      return { op: op.kind, fields: { adapter, path: op.path, naming: op.naming } };
    case 'drop_adapter':
      return { op: op.kind, fields: { adapter } };
  }
}

/** Whether an op is a forward pass (batched across runs in a cycle). */
export function isForward(op: TrainingOp): op is ForwardOp {
  return op.kind === 'forward' || op.kind === 'forward_backward';
}

/** Whether an op changes its run's adapter, so that recovery must replay it (a forward pass or a save does not). */
export function changesAdapter(op: TrainingOp): boolean {
  return op.kind !== 'forward' && op.kind !== 'save_adapter' && op.kind !== 'export_peft';
}
