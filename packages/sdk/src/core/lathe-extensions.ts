/**
 * @module `LatheExtensions`: Lathe's own endpoints under `/api/v1/lathe/` (not part of Tinker's
 * API): run summaries, a run's metric points (recorded by the server from each forward_backward and
 * optim_step, plus the metrics the client reports), and the service view (workers, queues,
 * throughput). `fetch` only, so it runs in browsers; the dashboard is built on it.
 */
import { InvalidArgumentError, LatheError } from './errors.js';
import type { RequestOptions } from './request-options.js';
import { normalizeBaseUrl } from './service-client.js';
import { withOptions } from '../internal/context.js';
import { responseJson, Transport, type HttpRequest } from '../internal/transport.js';
import { escapeSegment } from '../internal/wire.js';

/**
 * Options of {@link LatheExtensions}.
 *
 * @example
 * const lathe = new LatheExtensions({ baseUrl: 'http://127.0.0.1:8000', apiKey: 'tml-…' });
 */
export interface LatheExtensionsOptions {
  /** The server's URL, e.g. `http://127.0.0.1:8000` (a path prefix is kept). */
  baseUrl: string;
  /** The API key, sent as `X-API-Key`. */
  apiKey: string;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Limit of each HTTP request, per attempt (default 30 000 ms). */
  timeoutMs?: number;
  /** Retries of connection errors, timeouts, 408, 429 and 5xx (default 2). */
  maxRetries?: number;
}

/** What a run is doing: `training` while requests are queued or running, `active` within a minute of the last one. */
export type RunStatus = 'creating' | 'failed' | 'corrupted' | 'training' | 'active' | 'idle' | 'unloaded';

/**
 * One of the caller's training runs, as the dashboard lists it.
 *
 * @example
 * const { runs } = await lathe.listRuns();
 * runs[0]?.tokensTrained;
 */
export interface RunSummary {
  modelId: string;
  baseModel: string;
  loraRank: number;
  /** Optimizer steps applied. */
  steps: number;
  /** Tokens of every forward_backward so far. */
  tokensTrained: number;
  /** Epoch ms. */
  createdAt: number;
  /** Epoch ms of the last request. */
  lastActivity: number;
  status: RunStatus;
}

/**
 * A point of a run's curves. Server points (`source: 'server'`) come one per forward_backward
 * (`values['loss:sum']`, `tokens`) and per optim_step (`values['learning_rate:mean']`,
 * `values['grad_norm:mean']`); client points are the rows reported with {@link LatheExtensions.reportMetrics}.
 *
 * @example
 * const losses = points.filter((p) => p.kind === 'forward_backward').map((p) => [p.step, p.values['loss:sum']]);
 */
export interface MetricPoint {
  /** Increasing: pass the last one seen as `after` to get only newer points. */
  id: number;
  source: 'server' | 'client';
  kind: 'forward_backward' | 'optim_step' | 'client';
  /** Optimizer steps applied before the point (server), or the reported step (client). */
  step: number;
  tokens: number;
  /** Epoch ms. */
  time: number;
  values: Record<string, number>;
}

/**
 * One row of metrics a client reports for a step (the cookbook's `metrics.jsonl` rows).
 *
 * @example
 * const row: MetricsRow = { step: 3, metrics: { train_mean_nll: 1.7, 'env/reward': 0.5 } };
 */
export interface MetricsRow {
  step: number;
  /** Finite numbers only, at most 200 names. */
  metrics: Record<string, number>;
}

/**
 * The shared hardware: workers, each base model's queues and adapters, and training throughput.
 *
 * @example
 * const status = await lathe.serviceStatus();
 * status.models.map((m) => `${m.modelName}: ${m.queue.training} queued`);
 */
export interface ServiceStatus {
  workers: { id: string; kind: string; address: string | null; pid: number | null; devices: unknown; modelsLoaded: string[] }[];
  models: { modelName: string; queue: { training: number; sampling: number }; adapters: number; yourAdapters: string[] }[];
  throughput: { windowSeconds: number; tokensPerSecond: number; perMinute: { start: number; tokens: number; tokensPerSecond: number }[] };
}

/** Rows per request: the server takes at most 1000. */
const REPORT_CHUNK = 1000;

/**
 * A client for Lathe's extension endpoints.
 *
 * @example
 * import { LatheExtensions } from '@lathe/sdk';
 *
 * const lathe = new LatheExtensions({ baseUrl: 'http://127.0.0.1:8000', apiKey: 'tml-…' });
 * const { runs } = await lathe.listRuns();
 * let after = 0;
 * const page = await lathe.runMetrics(runs[0]!.modelId, { after });
 * after = page.cursor; // poll again with it for newer points only
 */
export class LatheExtensions {
  readonly #transport: Transport;

  /**
   * @throws {LatheError} when `apiKey` is empty or no `fetch` exists; {@link InvalidArgumentError}
   *   when `baseUrl` is not an absolute http(s) URL.
   * @example
   * new LatheExtensions({ baseUrl: location.origin, apiKey });
   */
  constructor(options: LatheExtensionsOptions) {
    if (!options.apiKey) throw new LatheError('No API key: pass { apiKey }.');
    const fetchImpl = options.fetch ?? (globalThis.fetch as typeof fetch | undefined);
    if (!fetchImpl) throw new LatheError('No fetch: pass { fetch } on runtimes without a global fetch.');
    this.#transport = new Transport({
      baseUrl: normalizeBaseUrl(options.baseUrl, 'the baseUrl option'),
      apiKey: options.apiKey,
      // Unbound `fetch` throws "Illegal invocation" in browsers.
      fetch: (input, init) => fetchImpl(input, init),
      timeoutMs: options.timeoutMs ?? 30_000,
      maxRetries: options.maxRetries ?? 2,
      initialRetryDelayMs: 500,
      maxRetryDelayMs: 8_000,
      defaultHeaders: {},
    });
  }

  async #json<T>(req: HttpRequest, options: RequestOptions | undefined): Promise<T> {
    return responseJson<T>(await this.#transport.send(withOptions(req, options)));
  }

  /**
   * The caller's runs, newest first.
   *
   * @example
   * const { runs, total } = await lathe.listRuns({ limit: 20 });
   */
  async listRuns(options?: RequestOptions & { limit?: number; offset?: number }): Promise<{ runs: RunSummary[]; total: number }> {
    const body = await this.#json<{ runs: WireRun[]; total: number }>({ method: 'GET', path: 'api/v1/lathe/runs', query: { limit: options?.limit, offset: options?.offset } }, options);
    return {
      runs: body.runs.map((r) => ({
        modelId: r.model_id,
        baseModel: r.base_model,
        loraRank: r.lora_rank,
        steps: r.steps,
        tokensTrained: r.tokens_trained,
        createdAt: r.created_at,
        lastActivity: r.last_activity,
        status: r.status,
      })),
      total: body.total,
    };
  }

  /**
   * A run's metric points with `id > after` (default 0: all), oldest first, and the cursor to poll
   * with next.
   *
   * @throws {NotFoundError} for an unknown run or another key's.
   * @example
   * const { points, cursor } = await lathe.runMetrics(training.modelId, { after: 0 });
   */
  async runMetrics(modelId: string, options?: RequestOptions & { after?: number; limit?: number }): Promise<{ points: MetricPoint[]; cursor: number }> {
    const body = await this.#json<{ points: MetricPoint[]; cursor: number }>(
      { method: 'GET', path: `api/v1/lathe/runs/${escapeSegment(modelId)}/metrics`, query: { after: options?.after, limit: options?.limit } },
      options,
    );
    return { points: body.points, cursor: body.cursor };
  }

  /**
   * Reports metrics rows of a run (shown beside the server's curves). Non-finite values are left out
   * (JSON cannot carry them); a step reported again replaces the earlier row.
   *
   * @throws {InvalidArgumentError} for a step that is not a non-negative integer;
   *   {@link NotFoundError} for an unknown run or another key's.
   * @example
   * await lathe.reportMetrics(training.modelId, [{ step: 0, metrics: { train_mean_nll: 2.1 } }]);
   */
  async reportMetrics(modelId: string, rows: readonly MetricsRow[], options?: RequestOptions): Promise<void> {
    const wire = rows.map((row) => {
      if (!Number.isSafeInteger(row.step) || row.step < 0) throw new InvalidArgumentError(`metrics row step must be a non-negative integer, got ${row.step}`);
      return { step: row.step, metrics: Object.fromEntries(Object.entries(row.metrics).filter(([, v]) => typeof v === 'number' && Number.isFinite(v))) };
    });
    for (let i = 0; i < wire.length; i += REPORT_CHUNK) {
      await this.#json({ method: 'POST', path: `api/v1/lathe/runs/${escapeSegment(modelId)}/metrics`, json: { rows: wire.slice(i, i + REPORT_CHUNK) } }, options);
    }
  }

  /**
   * Workers and the base models each holds, queue depth and loaded adapters per model (with the
   * caller's own), and trained tokens per second over the last minutes.
   *
   * @example
   * const { throughput } = await lathe.serviceStatus();
   * console.log(`${throughput.tokensPerSecond.toFixed(1)} tokens/s`);
   */
  async serviceStatus(options?: RequestOptions): Promise<ServiceStatus> {
    const body = await this.#json<WireService>({ method: 'GET', path: 'api/v1/lathe/service' }, options);
    return {
      workers: body.workers.map((w) => ({ id: w.id, kind: w.kind, address: w.address ?? null, pid: w.pid ?? null, devices: w.devices, modelsLoaded: w.models_loaded })),
      models: body.models.map((m) => ({ modelName: m.model_name, queue: m.queue, adapters: m.adapters, yourAdapters: m.your_adapters })),
      throughput: {
        windowSeconds: body.throughput.window_s,
        tokensPerSecond: body.throughput.tokens_per_s,
        perMinute: body.throughput.per_minute.map((b) => ({ start: b.start, tokens: b.tokens, tokensPerSecond: b.tokens_per_s })),
      },
    };
  }
}

interface WireRun {
  model_id: string;
  base_model: string;
  lora_rank: number;
  steps: number;
  tokens_trained: number;
  created_at: number;
  last_activity: number;
  status: RunStatus;
}

interface WireService {
  workers: { id: string; kind: string; address?: string | null; pid?: number | null; devices: unknown; models_loaded: string[] }[];
  models: { model_name: string; queue: { training: number; sampling: number }; adapters: number; your_adapters: string[] }[];
  throughput: { window_s: number; tokens_per_s: number; per_minute: { start: number; tokens: number; tokens_per_s: number }[] };
}
