/**
 * @module `RestClient`: training runs, checkpoints, sessions and samplers (tinker-protocol.md §4.6).
 * Plain request/response calls; none needs a session.
 */
import { APIError, APIResponseValidationError, InvalidArgumentError } from './errors.js';
import type { RequestOptions } from './request-options.js';
import type {
  AccessScope,
  Checkpoint,
  CheckpointArchiveUrlResponse,
  CheckpointsListResponse,
  CheckpointStorageUsage,
  ExternalWeightsUrlsResponse,
  GetSamplerResponse,
  GetSessionResponse,
  ListSessionsResponse,
  TrainingRun,
  TrainingRunsResponse,
  WeightsInfoResponse,
} from './types.js';
import { withOptions } from '../internal/context.js';
import { responseJson, type HttpRequest, type HttpResponse, type Transport } from '../internal/transport.js';
import {
  checkpointsListFromJson,
  cursorFromJson,
  escapeSegment,
  metadataFromJson,
  parseTinkerPath,
  requireString,
  trainingRunFromJson,
  weightsInfoFromJson,
} from '../internal/wire.js';

/**
 * Paging of list calls.
 *
 * @example
 * await rest.listTrainingRuns({ limit: 50, offset: 100 });
 */
export interface PageOptions {
  limit?: number;
  offset?: number;
}

/**
 * Options of `listTrainingRuns`.
 *
 * @example
 * await rest.listTrainingRuns({ limit: 10, accessScope: 'owned' });
 */
export interface ListTrainingRunsOptions extends PageOptions {
  accessScope?: AccessScope;
  projectId?: string;
}

/** Default archive-link lifetime when a redirect carries no `Expires`. */
const ARCHIVE_DEFAULT_TTL_MS = 15 * 60 * 1000;

/**
 * Browses and manages what the server stores: training runs, checkpoints (list, delete, archive
 * links, publish, TTL), sessions and samplers. Get one from `ServiceClient.createRestClient()`.
 *
 * @example
 * const rest = service.createRestClient();
 * const { trainingRuns } = await rest.listTrainingRuns({ limit: 10 });
 * for (const run of trainingRuns) {
 *   const { checkpoints } = await rest.listCheckpoints(run.trainingRunId);
 *   console.log(run.trainingRunId, checkpoints.map((c) => c.tinkerPath));
 * }
 */
export class RestClient {
  readonly #transport: Transport;

  /**
   * Normally created by `ServiceClient.createRestClient()`.
   *
   * @example
   * const rest = new RestClient(transport);
   */
  constructor(transport: Transport) {
    this.#transport = transport;
  }

  async #json(req: HttpRequest, options: RequestOptions | undefined): Promise<unknown> {
    return responseJson(await this.#transport.send(withOptions(req, options)));
  }

  #checkpointPath(trainingRunId: string, checkpointId: string, action = ''): string {
    return `api/v1/training_runs/${escapeSegment(trainingRunId)}/checkpoints/${escapeSegment(checkpointId, true)}${action ? `/${action}` : ''}`;
  }

  // -------------------------------------------------------------------------------------------
  // Training runs

  /**
   * One training run.
   *
   * @example
   * const run = await rest.getTrainingRun(training.modelId);
   * run.loraRank; run.lastCheckpoint?.tinkerPath;
   */
  async getTrainingRun(trainingRunId: string, options?: RequestOptions & { accessScope?: AccessScope }): Promise<TrainingRun> {
    const query = options?.accessScope ? { access_scope: options.accessScope } : undefined;
    return trainingRunFromJson(await this.#json({ method: 'GET', path: `api/v1/training_runs/${escapeSegment(trainingRunId)}`, query }, options));
  }

  /**
   * The training run a `tinker://` path belongs to.
   *
   * @example
   * await rest.getTrainingRunByTinkerPath('tinker://S:train:0/weights/step-10');
   */
  async getTrainingRunByTinkerPath(tinkerPath: string, options?: RequestOptions & { accessScope?: AccessScope }): Promise<TrainingRun> {
    return this.getTrainingRun(parseTinkerPath(tinkerPath).trainingRunId, options);
  }

  /**
   * One page of this key's training runs, newest first, with a cursor.
   *
   * @example
   * const { trainingRuns, cursor } = await rest.listTrainingRuns({ limit: 20, offset: 0 });
   */
  async listTrainingRuns(page: ListTrainingRunsOptions = {}, options?: RequestOptions): Promise<TrainingRunsResponse> {
    const body = (await this.#json(
      {
        method: 'GET',
        path: 'api/v1/training_runs',
        query: { limit: page.limit ?? 20, offset: page.offset ?? 0, access_scope: page.accessScope, project_id: page.projectId },
      },
      options,
    )) as Record<string, unknown>;
    const runs = Array.isArray(body['training_runs']) ? (body['training_runs'] as unknown[]) : [];
    const trainingRuns = runs.map(trainingRunFromJson);
    return { trainingRuns, cursor: cursorFromJson(body['cursor']) ?? { offset: page.offset ?? 0, limit: page.limit ?? 20, totalCount: trainingRuns.length } };
  }

  /**
   * Every training run, fetched page by page as you iterate.
   *
   * @example
   * for await (const run of rest.iterTrainingRuns({ limit: 100 })) console.log(run.trainingRunId);
   */
  async *iterTrainingRuns(page: ListTrainingRunsOptions = {}, options?: RequestOptions): AsyncGenerator<TrainingRun> {
    let offset = page.offset ?? 0;
    for (;;) {
      const { trainingRuns, cursor } = await this.listTrainingRuns({ ...page, offset }, options);
      yield* trainingRuns;
      offset += trainingRuns.length;
      if (trainingRuns.length === 0 || offset >= cursor.totalCount) return;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Checkpoints

  /**
   * What a checkpoint holds (base model, LoRA rank and targets).
   *
   * @example
   * const info = await rest.getWeightsInfoByTinkerPath('tinker://S:train:0/weights/step-10');
   */
  async getWeightsInfoByTinkerPath(tinkerPath: string, options?: RequestOptions): Promise<WeightsInfoResponse> {
    return weightsInfoFromJson(await this.#json({ method: 'POST', path: 'api/v1/weights_info', json: { tinker_path: tinkerPath } }, options));
  }

  /**
   * All checkpoints of a training run.
   *
   * @example
   * const { checkpoints } = await rest.listCheckpoints(training.modelId);
   */
  async listCheckpoints(trainingRunId: string, options?: RequestOptions): Promise<CheckpointsListResponse> {
    return checkpointsListFromJson(await this.#json({ method: 'GET', path: `api/v1/training_runs/${escapeSegment(trainingRunId)}/checkpoints` }, options));
  }

  /**
   * One page of all this key's checkpoints, newest first.
   *
   * @example
   * const { checkpoints, cursor } = await rest.listUserCheckpoints({ limit: 100 });
   */
  async listUserCheckpoints(page: PageOptions = {}, options?: RequestOptions): Promise<CheckpointsListResponse> {
    return checkpointsListFromJson(await this.#json({ method: 'GET', path: 'api/v1/checkpoints', query: { limit: page.limit ?? 100, offset: page.offset ?? 0 } }, options));
  }

  /**
   * Every checkpoint of this key, fetched page by page as you iterate.
   *
   * @example
   * for await (const c of rest.iterUserCheckpoints()) console.log(c.tinkerPath);
   */
  async *iterUserCheckpoints(page: PageOptions = {}, options?: RequestOptions): AsyncGenerator<Checkpoint> {
    let offset = page.offset ?? 0;
    for (;;) {
      const { checkpoints, cursor } = await this.listUserCheckpoints({ ...page, offset }, options);
      yield* checkpoints;
      offset += checkpoints.length;
      if (checkpoints.length === 0 || !cursor || offset >= cursor.totalCount) return;
    }
  }

  /**
   * A signed, expiring link to download a checkpoint as a tar of its PEFT adapter. Both forms of
   * the answer are understood: JSON `{url, expires}` and a 302 redirect.
   *
   * @example
   * const { url } = await rest.getCheckpointArchiveUrl(training.modelId, 'sampler_weights/final');
   * const tar = await (await fetch(url)).arrayBuffer();
   */
  async getCheckpointArchiveUrl(trainingRunId: string, checkpointId: string, options?: RequestOptions): Promise<CheckpointArchiveUrlResponse> {
    const res: HttpResponse = await this.#transport.send(withOptions({ method: 'GET', path: this.#checkpointPath(trainingRunId, checkpointId, 'archive'), redirect: 'manual' }, options));
    if (res.status >= 300 && res.status < 400) {
      const location = res.headers.get('location');
      if (!location) throw new APIError(res.status, undefined, res.headers, `archive redirect (${res.status}) without a Location header`);
      const expires = Date.parse(res.headers.get('expires') ?? '');
      return { url: location, expires: new Date(Number.isFinite(expires) ? expires : Date.now() + ARCHIVE_DEFAULT_TTL_MS).toISOString() };
    }
    const body = responseJson(res);
    const expires = (body as { expires?: unknown }).expires;
    if (typeof expires !== 'string') throw new APIResponseValidationError('checkpoint archive: expected "expires"');
    return { url: requireString(body, 'url', 'checkpoint archive'), expires };
  }

  /**
   * {@link getCheckpointArchiveUrl} by `tinker://` path.
   *
   * @example
   * await rest.getCheckpointArchiveUrlFromTinkerPath('tinker://S:train:0/sampler_weights/final');
   */
  async getCheckpointArchiveUrlFromTinkerPath(tinkerPath: string, options?: RequestOptions): Promise<CheckpointArchiveUrlResponse> {
    const { trainingRunId, checkpointId } = parseTinkerPath(tinkerPath);
    return this.getCheckpointArchiveUrl(trainingRunId, checkpointId, options);
  }

  /**
   * Signed, expiring download links of the files of an external checkpoint (`saveWeightsExternal`):
   * a Hugging Face PEFT adapter, `adapter_config.json` and `adapter_model.safetensors`.
   *
   * @example
   * const { path } = await training.saveWeightsExternal('hf');
   * const { urls } = await rest.getExternalWeightsUrls(path);
   * const weights = await (await fetch(urls['adapter_model.safetensors']!)).arrayBuffer();
   */
  async getExternalWeightsUrls(tinkerPath: string, options?: RequestOptions): Promise<ExternalWeightsUrlsResponse> {
    const { trainingRunId, checkpointId } = parseTinkerPath(tinkerPath);
    if (!checkpointId.startsWith('external_weights/')) throw new InvalidArgumentError(`${tinkerPath} is not an external_weights/ checkpoint`);
    const body = (await this.#json({ method: 'GET', path: this.#checkpointPath(trainingRunId, checkpointId, 'external_weights_urls') }, options)) as Record<string, unknown>;
    const urls = body['urls'];
    if (typeof urls !== 'object' || urls === null || typeof body['expires'] !== 'string') throw new APIResponseValidationError('external_weights_urls: expected {urls, expires}');
    return { urls: { ...(urls as Record<string, string>) }, expires: body['expires'] };
  }

  /**
   * How many checkpoints this key keeps and their bytes (optionally of one project's sessions).
   *
   * @example
   * const { checkpointCount, sizeBytes } = await rest.getCurrentCheckpointStorageUsage();
   */
  async getCurrentCheckpointStorageUsage(options?: RequestOptions & { projectId?: string }): Promise<CheckpointStorageUsage> {
    const query = options?.projectId !== undefined ? { project_id: options.projectId } : undefined;
    const body = (await this.#json({ method: 'GET', path: 'api/v1/billing/usage/checkpoints/current', query }, options)) as Record<string, unknown>;
    const rows = Array.isArray(body['data']) ? (body['data'] as Record<string, unknown>[]) : [];
    const sum = (key: string): number => rows.reduce((total, row) => total + (typeof row[key] === 'number' ? (row[key] as number) : 0), 0);
    return { checkpointCount: sum('checkpoint_count'), sizeBytes: sum('size_bytes') };
  }

  /**
   * Deletes a checkpoint.
   *
   * @example
   * await rest.deleteCheckpoint(training.modelId, 'weights/step-10');
   */
  async deleteCheckpoint(trainingRunId: string, checkpointId: string, options?: RequestOptions): Promise<void> {
    await this.#transport.send(withOptions({ method: 'DELETE', path: this.#checkpointPath(trainingRunId, checkpointId) }, options));
  }

  /**
   * Deletes a checkpoint by `tinker://` path.
   *
   * @example
   * await rest.deleteCheckpointFromTinkerPath('tinker://S:train:0/weights/step-10');
   */
  async deleteCheckpointFromTinkerPath(tinkerPath: string, options?: RequestOptions): Promise<void> {
    const { trainingRunId, checkpointId } = parseTinkerPath(tinkerPath);
    return this.deleteCheckpoint(trainingRunId, checkpointId, options);
  }

  /**
   * Makes a checkpoint readable by other keys.
   *
   * @example
   * await rest.publishCheckpointFromTinkerPath(path);
   */
  async publishCheckpointFromTinkerPath(tinkerPath: string, options?: RequestOptions): Promise<void> {
    const { trainingRunId, checkpointId } = parseTinkerPath(tinkerPath);
    await this.#transport.send(withOptions({ method: 'POST', path: this.#checkpointPath(trainingRunId, checkpointId, 'publish') }, options));
  }

  /**
   * Makes a published checkpoint private again.
   *
   * @example
   * await rest.unpublishCheckpointFromTinkerPath(path);
   */
  async unpublishCheckpointFromTinkerPath(tinkerPath: string, options?: RequestOptions): Promise<void> {
    const { trainingRunId, checkpointId } = parseTinkerPath(tinkerPath);
    await this.#transport.send(withOptions({ method: 'DELETE', path: this.#checkpointPath(trainingRunId, checkpointId, 'publish') }, options));
  }

  /**
   * Sets a checkpoint's time to live in seconds from now; `null` removes it (keep forever).
   *
   * @example
   * await rest.setCheckpointTtlFromTinkerPath(path, 3600);
   * await rest.setCheckpointTtlFromTinkerPath(path, null);
   */
  async setCheckpointTtlFromTinkerPath(tinkerPath: string, ttlSeconds: number | null, options?: RequestOptions): Promise<void> {
    const { trainingRunId, checkpointId } = parseTinkerPath(tinkerPath);
    await this.#transport.send(withOptions({ method: 'PUT', path: this.#checkpointPath(trainingRunId, checkpointId, 'ttl'), json: { ttl_seconds: ttlSeconds } }, options));
  }

  // -------------------------------------------------------------------------------------------
  // Sessions and samplers

  /**
   * The training runs and samplers of a session.
   *
   * @example
   * const { trainingRunIds, samplerIds } = await rest.getSession(service.sessionId!);
   */
  async getSession(sessionId: string, options?: RequestOptions & { accessScope?: AccessScope }): Promise<GetSessionResponse> {
    const query = options?.accessScope ? { access_scope: options.accessScope } : undefined;
    const body = (await this.#json({ method: 'GET', path: `api/v1/sessions/${escapeSegment(sessionId)}`, query }, options)) as Record<string, unknown>;
    return {
      trainingRunIds: Array.isArray(body['training_run_ids']) ? (body['training_run_ids'] as string[]) : [],
      samplerIds: Array.isArray(body['sampler_ids']) ? (body['sampler_ids'] as string[]) : [],
      userMetadata: metadataFromJson(body['user_metadata']),
    };
  }

  /**
   * One page of this key's session ids.
   *
   * @example
   * const { sessions } = await rest.listSessions({ limit: 20 });
   */
  async listSessions(page: PageOptions & { accessScope?: AccessScope } = {}, options?: RequestOptions): Promise<ListSessionsResponse> {
    const body = (await this.#json(
      { method: 'GET', path: 'api/v1/sessions', query: { limit: page.limit ?? 20, offset: page.offset ?? 0, access_scope: page.accessScope } },
      options,
    )) as Record<string, unknown>;
    return { sessions: Array.isArray(body['sessions']) ? (body['sessions'] as string[]) : [] };
  }

  /**
   * Files a session under a project.
   *
   * @example
   * await rest.assignSessionProject(sessionId, 'proj-1');
   */
  async assignSessionProject(sessionId: string, projectId: string, options?: RequestOptions): Promise<void> {
    await this.#transport.send(withOptions({ method: 'PUT', path: `api/v1/sessions/${escapeSegment(sessionId)}/project`, json: { project_id: projectId } }, options));
  }

  /**
   * A sampling session: its base model and the weights it samples.
   *
   * @example
   * const { baseModel, modelPath } = await rest.getSampler(sampler.samplingSessionId);
   */
  async getSampler(samplerId: string, options?: RequestOptions): Promise<GetSamplerResponse> {
    const body = await this.#json({ method: 'GET', path: `api/v1/samplers/${escapeSegment(samplerId)}` }, options);
    const modelPath = (body as { model_path?: unknown }).model_path;
    return {
      samplerId: requireString(body, 'sampler_id', 'get_sampler'),
      baseModel: requireString(body, 'base_model', 'get_sampler'),
      modelPath: typeof modelPath === 'string' ? modelPath : undefined,
    };
  }
}
