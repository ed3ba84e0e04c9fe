/**
 * @module The endpoint layer: one typed function per `/api/v1` path (tinker-protocol.md §4). Each
 * builds its request (path, method, body in the wire's snake_case), sends it and reads the answer
 * into the public camelCase types. Submitting functions return the request id of the server's
 * future; `*Result` functions read that future's JSON result. Ordering (`seq_id`s), futures and
 * sessions are the client classes' business.
 */
import { encodeForwardBackwardRequest, type DatumIn } from '@lathe/protocol';
import { APIError, APIResponseValidationError, InvalidArgumentError } from '../core/errors.js';
import type { RequestOptions } from '../core/request-options.js';
import type { LoraTrainingClientArgs } from '../core/service-client.js';
import type {
  AccessScope,
  CheckpointArchiveUrlResponse,
  CheckpointsListResponse,
  CheckpointStorageUsage,
  ExternalWeightsUrlsResponse,
  GetInfoResponse,
  GetSamplerResponse,
  GetServerCapabilitiesResponse,
  GetSessionResponse,
  ListSessionsResponse,
  LoadWeightsResponse,
  OptimStepResponse,
  SaveWeightsExternalResponse,
  SaveWeightsResponse,
  TrainingRun,
  TrainingRunsResponse,
  WeightsInfoResponse,
} from '../core/types.js';
import { withOptions } from './context.js';
import { responseJson, type HttpRequest, type HttpResponse, type Transport } from './transport.js';
import {
  capabilitiesFromJson,
  checkpointsListFromJson,
  cursorFromJson,
  escapeSegment,
  getInfoFromJson,
  metadataFromJson,
  requireString,
  trainingRunFromJson,
  weightsInfoFromJson,
} from './wire.js';

type Json = Record<string, unknown>;

const V1 = 'api/v1/';

async function json(t: Transport, req: HttpRequest, options?: RequestOptions): Promise<Json> {
  return responseJson<Json>(await t.send(withOptions(req, options)));
}

/** POSTs `body` and returns the `request_id` of the future it created. */
async function submit(t: Transport, path: string, body: Json, options?: RequestOptions, extra: Partial<HttpRequest> = {}): Promise<string> {
  return requireString(await json(t, { method: 'POST', path: V1 + path, json: body, ...extra }, options), 'request_id', path);
}

/** Only the keys whose value is defined (the wire leaves unset optional fields out). */
function defined(fields: Json): Json {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
}

const string = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const strings = (v: unknown): string[] => (Array.isArray(v) ? (v as string[]) : []);

// ---------------------------------------------------------------------------------------------
// Session and futures

/** `POST /client/config`: the server's limits and feature flags for this SDK version. */
export const clientConfig = (t: Transport, sdkVersion: string): Promise<Json> => json(t, { method: 'POST', path: `${V1}client/config`, json: { sdk_version: sdkVersion } });

/** `POST /create_session`: a new session's id. */
export async function createSession(t: Transport, body: { tags: string[]; userMetadata: Record<string, string>; sdkVersion: string; projectId?: string | undefined }): Promise<string> {
  const wire = defined({ tags: body.tags, user_metadata: body.userMetadata, sdk_version: body.sdkVersion, type: 'create_session', project_id: body.projectId });
  return requireString(await json(t, { method: 'POST', path: `${V1}create_session`, json: wire }), 'session_id', 'create_session');
}

/** `POST /session_heartbeat`, once (no retries: the next beat is the retry). */
export async function sessionHeartbeat(t: Transport, sessionId: string): Promise<void> {
  const timeoutMs = Math.min(10_000, t.config.timeoutMs);
  await t.send({ method: 'POST', path: `${V1}session_heartbeat`, json: { session_id: sessionId, type: 'session_heartbeat' }, timeoutMs, maxRetries: 0 });
}

/** `POST /sessions/{id}/finish` with a reason (SDK ≥ 0.32). */
export async function finishSession(t: Transport, sessionId: string, reason: string, detail: string | undefined): Promise<void> {
  const body = defined({ reason: { type: reason }, detail });
  await t.send({ method: 'POST', path: `${V1}sessions/${escapeSegment(sessionId)}/finish`, json: body, maxRetries: 1 });
}

/** `POST /retrieve_future`: one poll, its answer handed back whatever the status (the poll loop reads it). */
export function retrieveFuturePoll(
  t: Transport,
  poll: { requestId: string; allowMetadataOnly: boolean; accept: string; headers: Record<string, string>; timeoutMs: number; signal?: AbortSignal | undefined },
): Promise<HttpResponse> {
  return t.send({
    method: 'POST',
    path: `${V1}retrieve_future`,
    json: { request_id: poll.requestId, allow_metadata_only: poll.allowMetadataOnly },
    accept: poll.accept,
    headers: poll.headers,
    timeoutMs: poll.timeoutMs,
    maxRetries: 0,
    signal: poll.signal,
    passStatus: (s) => s === 400 || s === 408 || s === 410 || s === 429 || s >= 500,
  });
}

// ---------------------------------------------------------------------------------------------
// Service

/** `GET /get_server_capabilities`. */
export async function getServerCapabilities(t: Transport, options?: RequestOptions): Promise<GetServerCapabilitiesResponse> {
  return capabilitiesFromJson(await json(t, { method: 'GET', path: `${V1}get_server_capabilities` }, options));
}

/**
 * `POST /create_model` with the Python SDK's LoRA defaults (rank 32, every target on): the
 * future's request id, and the model id when the server answers it at once.
 */
export async function createModel(t: Transport, args: LoraTrainingClientArgs & { sessionId: string; modelSeqId: number }, options?: RequestOptions): Promise<{ requestId: string; modelId: string | undefined }> {
  const lora = defined({ rank: args.rank ?? 32, train_unembed: args.trainUnembed ?? true, train_mlp: args.trainMlp ?? true, train_attn: args.trainAttn ?? true, seed: args.seed });
  const body = defined({
    session_id: args.sessionId,
    model_seq_id: args.modelSeqId,
    base_model: args.baseModel,
    lora_config: lora,
    user_metadata: args.userMetadata,
    optimizer_config: args.optimizerConfig,
    type: 'create_model',
  });
  const submitted = await json(t, { method: 'POST', path: `${V1}create_model`, json: body }, options);
  return { requestId: requireString(submitted, 'request_id', 'create_model'), modelId: string(submitted['model_id']) };
}

/** The model id of a finished `create_model` future, else the one answered at submission. */
export function createModelResult(result: unknown, submittedModelId: string | undefined): string {
  const modelId = string((result as Json | null)?.['model_id']) ?? submittedModelId;
  if (modelId === undefined) throw new APIResponseValidationError(`create_model: expected a string "model_id" in ${JSON.stringify(result)?.slice(0, 200)}`);
  return modelId;
}

/** `POST /copy_weights`: the copy's `tinker://` path. */
export async function copyWeights(t: Transport, body: { sessionId: string; modelSeqId: number; sourcePath: string; ttlSeconds?: number | undefined }, options?: RequestOptions): Promise<string> {
  const wire = defined({ session_id: body.sessionId, model_seq_id: body.modelSeqId, source_path: body.sourcePath, ttl_seconds: body.ttlSeconds });
  return requireString(await json(t, { method: 'POST', path: `${V1}copy_weights`, json: wire }, options), 'tinker_path', 'copy_weights');
}

// ---------------------------------------------------------------------------------------------
// Training (seq-numbered: the caller picks `seqId`)

/** `POST /forward_backward` (also `forward`, with `forwardOnly`), as protobuf. */
export function forwardBackward(
  t: Transport,
  msg: { modelId: string; seqId: number; data: readonly DatumIn[]; lossFn: string; lossFnConfig: Record<string, number>; forwardOnly: boolean },
  options?: RequestOptions,
): Promise<string> {
  return submitBytes(t, 'forward_backward', encodeForwardBackwardRequest(msg), options);
}

async function submitBytes(t: Transport, path: string, bytes: Uint8Array, options?: RequestOptions): Promise<string> {
  return requireString(await json(t, { method: 'POST', path: V1 + path, bytes, contentType: 'application/x-protobuf' }, options), 'request_id', path);
}

/** `POST /optim_step`; `step` is `{adam_params}` or `{optimizer_params}`. */
export const optimStep = (t: Transport, modelId: string, seqId: number, step: Json, options?: RequestOptions): Promise<string> =>
  submit(t, 'optim_step', { ...step, model_id: modelId, seq_id: seqId, type: 'optim_step' }, options);

export const optimStepResult = (r: unknown): OptimStepResponse => ({ metrics: { ...((r as { metrics?: Record<string, number> } | null)?.metrics ?? {}) } });

/** Options of the three save endpoints. */
export interface SaveBody {
  name?: string | undefined;
  ttlSeconds?: number | undefined;
  overwrite?: boolean | undefined;
  userMetadata?: Record<string, string> | undefined;
  /** `save_weights_for_sampler` without a name: the sampling session to create on the weights. */
  samplingSessionSeqId?: number | undefined;
}

/** `POST /save_weights` (state), `/save_weights_for_sampler` or `/save_weights_external`. */
export function saveWeights(
  t: Transport,
  kind: 'save_weights' | 'save_weights_for_sampler' | 'save_weights_external',
  modelId: string,
  seqId: number,
  body: SaveBody,
  options?: RequestOptions,
): Promise<string> {
  const wire = defined({
    model_id: modelId,
    path: body.name,
    seq_id: seqId,
    sampling_session_seq_id: body.samplingSessionSeqId,
    ttl_seconds: body.ttlSeconds,
    overwrite: body.overwrite,
    user_metadata: body.userMetadata,
    type: kind,
  });
  return submit(t, kind, wire, options);
}

export const saveWeightsResult = (r: unknown): SaveWeightsResponse => ({ path: requireString(r, 'path', 'save_weights') });

export const samplingSessionResult = (r: unknown): string => requireString(r, 'sampling_session_id', 'save_weights_for_sampler');

export function saveWeightsExternalResult(r: unknown): SaveWeightsExternalResponse {
  const size = (r as { size_bytes?: unknown } | null)?.size_bytes;
  return { path: requireString(r, 'path', 'save_weights_external'), sizeBytes: typeof size === 'number' ? size : undefined };
}

/** `POST /load_weights`. */
export const loadWeights = (t: Transport, modelId: string, seqId: number, body: { path: string; optimizer: boolean; optimizerConfig?: unknown }, options?: RequestOptions): Promise<string> =>
  submit(t, 'load_weights', defined({ model_id: modelId, path: body.path, seq_id: seqId, optimizer: body.optimizer, optimizer_config: body.optimizerConfig, type: 'load_weights' }), options);

export const loadWeightsResult = (r: unknown): LoadWeightsResponse => ({ path: string((r as Json | null)?.['path']) });

/** `POST /get_info`. */
export async function getInfo(t: Transport, modelId: string, options?: RequestOptions): Promise<GetInfoResponse> {
  return getInfoFromJson(await json(t, { method: 'POST', path: `${V1}get_info`, json: { model_id: modelId, type: 'get_info' } }, options));
}

// ---------------------------------------------------------------------------------------------
// Sampling

/** `POST /create_sampling_session`: the new sampling session's id. */
export async function createSamplingSession(t: Transport, body: { sessionId: string; samplingSessionSeqId: number; modelPath?: string | undefined; baseModel?: string | undefined }, options?: RequestOptions): Promise<string> {
  const wire = defined({ session_id: body.sessionId, sampling_session_seq_id: body.samplingSessionSeqId, type: 'create_sampling_session', model_path: body.modelPath, base_model: body.baseModel });
  return requireString(await json(t, { method: 'POST', path: `${V1}create_sampling_session`, json: wire }, options), 'sampling_session_id', 'create_sampling_session');
}

/** `POST /asample` (with backpressure: a busy server answers 429): the request id and the sequences' ids, when the server names them. */
export async function asample(t: Transport, body: Json, options?: RequestOptions): Promise<{ requestId: string; sequenceIds: string[] | undefined }> {
  const answer = await json(t, { method: 'POST', path: `${V1}asample`, json: { ...body, type: 'sample' }, headers: { 'x-tinker-sampling-backpressure': '1' } }, options);
  const ids = answer['sample_sequence_ids'];
  return { requestId: requireString(answer, 'request_id', 'asample'), sequenceIds: Array.isArray(ids) ? ids.map(String) : undefined };
}

/** `GET /samplers/{id}`. */
export async function getSampler(t: Transport, samplerId: string, options?: RequestOptions): Promise<GetSamplerResponse> {
  const body = await json(t, { method: 'GET', path: `${V1}samplers/${escapeSegment(samplerId)}` }, options);
  return { samplerId: requireString(body, 'sampler_id', 'get_sampler'), baseModel: requireString(body, 'base_model', 'get_sampler'), modelPath: string(body['model_path']) };
}

// ---------------------------------------------------------------------------------------------
// Training runs, checkpoints, sessions (REST)

const scope = (accessScope: AccessScope | undefined): HttpRequest['query'] => (accessScope ? { access_scope: accessScope } : undefined);

/** `GET /training_runs/{id}`. */
export async function getTrainingRun(t: Transport, trainingRunId: string, accessScope: AccessScope | undefined, options?: RequestOptions): Promise<TrainingRun> {
  return trainingRunFromJson(await json(t, { method: 'GET', path: `${V1}training_runs/${escapeSegment(trainingRunId)}`, query: scope(accessScope) }, options));
}

/** `GET /training_runs`: one page; a server without a cursor gets one made from the page. */
export async function listTrainingRuns(t: Transport, page: { limit: number; offset: number; accessScope?: AccessScope | undefined; projectId?: string | undefined }, options?: RequestOptions): Promise<TrainingRunsResponse> {
  const query = { limit: page.limit, offset: page.offset, access_scope: page.accessScope, project_id: page.projectId };
  const body = await json(t, { method: 'GET', path: `${V1}training_runs`, query }, options);
  const trainingRuns = (Array.isArray(body['training_runs']) ? (body['training_runs'] as unknown[]) : []).map(trainingRunFromJson);
  return { trainingRuns, cursor: cursorFromJson(body['cursor']) ?? { offset: page.offset, limit: page.limit, totalCount: trainingRuns.length } };
}

/** `POST /weights_info`. */
export async function weightsInfo(t: Transport, tinkerPath: string, options?: RequestOptions): Promise<WeightsInfoResponse> {
  return weightsInfoFromJson(await json(t, { method: 'POST', path: `${V1}weights_info`, json: { tinker_path: tinkerPath } }, options));
}

/** `GET /training_runs/{id}/checkpoints`. */
export async function listCheckpoints(t: Transport, trainingRunId: string, options?: RequestOptions): Promise<CheckpointsListResponse> {
  return checkpointsListFromJson(await json(t, { method: 'GET', path: `${V1}training_runs/${escapeSegment(trainingRunId)}/checkpoints` }, options));
}

/** `GET /checkpoints`: one page of all this key's checkpoints. */
export async function listUserCheckpoints(t: Transport, page: { limit: number; offset: number }, options?: RequestOptions): Promise<CheckpointsListResponse> {
  return checkpointsListFromJson(await json(t, { method: 'GET', path: `${V1}checkpoints`, query: page }, options));
}

/** A checkpoint's REST path, with an optional action (`archive`, `publish`, `ttl`, ...). */
function checkpointPath(trainingRunId: string, checkpointId: string, action = ''): string {
  return `${V1}training_runs/${escapeSegment(trainingRunId)}/checkpoints/${escapeSegment(checkpointId, true)}${action ? `/${action}` : ''}`;
}

/** Default archive-link lifetime when a redirect carries no `Expires`. */
const ARCHIVE_DEFAULT_TTL_MS = 15 * 60 * 1000;

/** `GET /training_runs/{id}/checkpoints/{checkpoint}/archive`: a JSON `{url, expires}` or a 302 redirect. */
export async function checkpointArchiveUrl(t: Transport, trainingRunId: string, checkpointId: string, options?: RequestOptions): Promise<CheckpointArchiveUrlResponse> {
  const res = await t.send(withOptions({ method: 'GET', path: checkpointPath(trainingRunId, checkpointId, 'archive'), redirect: 'manual' }, options));
  if (res.status >= 300 && res.status < 400) {
    const location = res.headers.get('location');
    if (!location) throw new APIError(res.status, undefined, res.headers, `archive redirect (${res.status}) without a Location header`);
    const expires = Date.parse(res.headers.get('expires') ?? '');
    return { url: location, expires: new Date(Number.isFinite(expires) ? expires : Date.now() + ARCHIVE_DEFAULT_TTL_MS).toISOString() };
  }
  const body = responseJson<Json>(res);
  const expires = string(body['expires']);
  if (expires === undefined) throw new APIResponseValidationError('checkpoint archive: expected "expires"');
  return { url: requireString(body, 'url', 'checkpoint archive'), expires };
}

/** `GET /training_runs/{id}/checkpoints/external_weights/{name}/external_weights_urls`. */
export async function externalWeightsUrls(t: Transport, trainingRunId: string, checkpointId: string, options?: RequestOptions): Promise<ExternalWeightsUrlsResponse> {
  if (!checkpointId.startsWith('external_weights/')) throw new InvalidArgumentError(`tinker://${trainingRunId}/${checkpointId} is not an external_weights/ checkpoint`);
  const body = await json(t, { method: 'GET', path: checkpointPath(trainingRunId, checkpointId, 'external_weights_urls') }, options);
  const urls = body['urls'];
  const expires = string(body['expires']);
  if (typeof urls !== 'object' || urls === null || expires === undefined) throw new APIResponseValidationError('external_weights_urls: expected {urls, expires}');
  return { urls: { ...(urls as Record<string, string>) }, expires };
}

/** `GET /billing/usage/checkpoints/current`, summed over its rows. */
export async function checkpointStorageUsage(t: Transport, projectId: string | undefined, options?: RequestOptions): Promise<CheckpointStorageUsage> {
  const query = projectId !== undefined ? { project_id: projectId } : undefined;
  const body = await json(t, { method: 'GET', path: `${V1}billing/usage/checkpoints/current`, query }, options);
  const rows = Array.isArray(body['data']) ? (body['data'] as Json[]) : [];
  const sum = (key: string): number => rows.reduce((total, row) => total + (typeof row[key] === 'number' ? (row[key] as number) : 0), 0);
  return { checkpointCount: sum('checkpoint_count'), sizeBytes: sum('size_bytes') };
}

/** `DELETE /training_runs/{id}/checkpoints/{checkpoint}`. */
export async function deleteCheckpoint(t: Transport, trainingRunId: string, checkpointId: string, options?: RequestOptions): Promise<void> {
  await t.send(withOptions({ method: 'DELETE', path: checkpointPath(trainingRunId, checkpointId) }, options));
}

/** `POST` (publish) or `DELETE` (unpublish) `/training_runs/{id}/checkpoints/{checkpoint}/publish`. */
export async function publishCheckpoint(t: Transport, trainingRunId: string, checkpointId: string, publish: boolean, options?: RequestOptions): Promise<void> {
  await t.send(withOptions({ method: publish ? 'POST' : 'DELETE', path: checkpointPath(trainingRunId, checkpointId, 'publish') }, options));
}

/** `PUT /training_runs/{id}/checkpoints/{checkpoint}/ttl` (`null`: keep forever). */
export async function setCheckpointTtl(t: Transport, trainingRunId: string, checkpointId: string, ttlSeconds: number | null, options?: RequestOptions): Promise<void> {
  await t.send(withOptions({ method: 'PUT', path: checkpointPath(trainingRunId, checkpointId, 'ttl'), json: { ttl_seconds: ttlSeconds } }, options));
}

/** `GET /sessions/{id}`. */
export async function getSession(t: Transport, sessionId: string, accessScope: AccessScope | undefined, options?: RequestOptions): Promise<GetSessionResponse> {
  const body = await json(t, { method: 'GET', path: `${V1}sessions/${escapeSegment(sessionId)}`, query: scope(accessScope) }, options);
  return { trainingRunIds: strings(body['training_run_ids']), samplerIds: strings(body['sampler_ids']), userMetadata: metadataFromJson(body['user_metadata']) };
}

/** `GET /sessions`: one page of session ids. */
export async function listSessions(t: Transport, page: { limit: number; offset: number; accessScope?: AccessScope | undefined }, options?: RequestOptions): Promise<ListSessionsResponse> {
  const body = await json(t, { method: 'GET', path: `${V1}sessions`, query: { limit: page.limit, offset: page.offset, access_scope: page.accessScope } }, options);
  return { sessions: strings(body['sessions']) };
}

/** `PUT /sessions/{id}/project`. */
export async function assignSessionProject(t: Transport, sessionId: string, projectId: string, options?: RequestOptions): Promise<void> {
  await t.send(withOptions({ method: 'PUT', path: `${V1}sessions/${escapeSegment(sessionId)}/project`, json: { project_id: projectId } }, options));
}
