/**
 * @module `RestClient`: training runs, checkpoints, sessions and samplers (tinker-protocol.md §4.6).
 * Plain request/response calls; none needs a session.
 */
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
import * as api from '../internal/api.js';
import type { Transport } from '../internal/transport.js';
import { parseTinkerPath } from '../internal/wire.js';

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
    return api.getTrainingRun(this.#transport, trainingRunId, options?.accessScope, options);
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
    return api.listTrainingRuns(this.#transport, { limit: page.limit ?? 20, offset: page.offset ?? 0, accessScope: page.accessScope, projectId: page.projectId }, options);
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
    return api.weightsInfo(this.#transport, tinkerPath, options);
  }

  /**
   * All checkpoints of a training run.
   *
   * @example
   * const { checkpoints } = await rest.listCheckpoints(training.modelId);
   */
  async listCheckpoints(trainingRunId: string, options?: RequestOptions): Promise<CheckpointsListResponse> {
    return api.listCheckpoints(this.#transport, trainingRunId, options);
  }

  /**
   * One page of all this key's checkpoints, newest first.
   *
   * @example
   * const { checkpoints, cursor } = await rest.listUserCheckpoints({ limit: 100 });
   */
  async listUserCheckpoints(page: PageOptions = {}, options?: RequestOptions): Promise<CheckpointsListResponse> {
    return api.listUserCheckpoints(this.#transport, { limit: page.limit ?? 100, offset: page.offset ?? 0 }, options);
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
    return api.checkpointArchiveUrl(this.#transport, trainingRunId, checkpointId, options);
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
    return api.externalWeightsUrls(this.#transport, trainingRunId, checkpointId, options);
  }

  /**
   * How many checkpoints this key keeps and their bytes (optionally of one project's sessions).
   *
   * @example
   * const { checkpointCount, sizeBytes } = await rest.getCurrentCheckpointStorageUsage();
   */
  async getCurrentCheckpointStorageUsage(options?: RequestOptions & { projectId?: string }): Promise<CheckpointStorageUsage> {
    return api.checkpointStorageUsage(this.#transport, options?.projectId, options);
  }

  /**
   * Deletes a checkpoint.
   *
   * @example
   * await rest.deleteCheckpoint(training.modelId, 'weights/step-10');
   */
  async deleteCheckpoint(trainingRunId: string, checkpointId: string, options?: RequestOptions): Promise<void> {
    await api.deleteCheckpoint(this.#transport, trainingRunId, checkpointId, options);
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
    await api.publishCheckpoint(this.#transport, trainingRunId, checkpointId, true, options);
  }

  /**
   * Makes a published checkpoint private again.
   *
   * @example
   * await rest.unpublishCheckpointFromTinkerPath(path);
   */
  async unpublishCheckpointFromTinkerPath(tinkerPath: string, options?: RequestOptions): Promise<void> {
    const { trainingRunId, checkpointId } = parseTinkerPath(tinkerPath);
    await api.publishCheckpoint(this.#transport, trainingRunId, checkpointId, false, options);
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
    await api.setCheckpointTtl(this.#transport, trainingRunId, checkpointId, ttlSeconds, options);
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
    return api.getSession(this.#transport, sessionId, options?.accessScope, options);
  }

  /**
   * One page of this key's session ids.
   *
   * @example
   * const { sessions } = await rest.listSessions({ limit: 20 });
   */
  async listSessions(page: PageOptions & { accessScope?: AccessScope } = {}, options?: RequestOptions): Promise<ListSessionsResponse> {
    return api.listSessions(this.#transport, { limit: page.limit ?? 20, offset: page.offset ?? 0, accessScope: page.accessScope }, options);
  }

  /**
   * Files a session under a project.
   *
   * @example
   * await rest.assignSessionProject(sessionId, 'proj-1');
   */
  async assignSessionProject(sessionId: string, projectId: string, options?: RequestOptions): Promise<void> {
    await api.assignSessionProject(this.#transport, sessionId, projectId, options);
  }

  /**
   * A sampling session: its base model and the weights it samples.
   *
   * @example
   * const { baseModel, modelPath } = await rest.getSampler(sampler.samplingSessionId);
   */
  async getSampler(samplerId: string, options?: RequestOptions): Promise<GetSamplerResponse> {
    return api.getSampler(this.#transport, samplerId, options);
  }
}
