/**
 * @module Client config, sessions, heartbeats, capabilities, telemetry (tinker-protocol.md §4.1).
 */
import type { FastifyInstance } from 'fastify';
import { gone, notFound } from '../http/errors.js';
import { CapabilitiesReply, CreateSessionReply, FinishSessionReply, HealthReply, HeartbeatReply, TelemetryReply } from './responses.js';
import { CreateSessionBody, FinishSessionBody, ProjectBody, SdkVersionBody, SessionIdBody, TelemetryBody } from '../protocol/schemas.js';
import type { Services } from '../services.js';
import { owner, type TypedApp } from './context.js';

/**
 * Every flag of the official SDK's `ClientConfigResponse` (§4.1.1; docs/protocol.md §2.1), set to
 * what Lathe supports: protobuf fwd/bwd, zstd accepted, no JWT exchange, the per-session
 * `retrieve_futures` poller and `join_sampling_session` (SDK >= 0.26 / 0.32), and the plain httpx
 * transport (`use_pyqwest_transport: false`), which is what Lathe is tested with. Unknown flags
 * are ignored by the SDK, so sending all of them is safe for older versions.
 */
export const CLIENT_CONFIG = {
  pjwt_auth_enabled: false,
  credential_default_source: 'api_key',
  sample_dispatch_bytes_semaphore_size: 10 * 1024 * 1024,
  inflight_response_bytes_semaphore_size: 50 * 1024 * 1024,
  proto_compress_fwdbwd: true,
  proto_write_fwdbwd: true,
  fwd_via_fwdbwd: true,
  parallel_fwdbwd_chunks: true,
  fwdbwd_max_chunk_len: 1024,
  fwdbwd_max_chunk_bytes_count: 5_000_000,
  fwdbwd_dispatch_bytes_semaphore_size: 50_000_000,
  billing_exception_max_pause_duration_sec: 3600,
  sample_no_retries: false,
  sample_enable_stuck_detection: true,
  sample_max_concurrent_requests: 2000,
  use_pyqwest_transport: false,
  create_model_via_load_weights: false,
  sample_use_retrieve_futures: true,
  sample_join_sampling_session: true,
} as const;

/** `ClientDynamicConfigResponse` (docs/protocol.md §2.2): abandoned samples are cancelled with `cancel_future`. */
export const DYNAMIC_CONFIG = {
  refresh_interval_sec: 300,
  sample_cancel_enabled: true,
  sample_cancel_max_batch_size: 64,
} as const;

export function serviceRoutes(app: TypedApp, services: Services): void {
  const { store } = services;

  app.post('/api/v1/client/config', { schema: { body: SdkVersionBody } }, async () => CLIENT_CONFIG);
  app.post('/api/v1/client/dynamic_config', { schema: { body: SdkVersionBody } }, async () => DYNAMIC_CONFIG);

  app.post('/api/v1/create_session', { schema: { body: CreateSessionBody, response: CreateSessionReply } }, async (request) => {
    const body = request.body;
    const session = await store.sessions.create({
      owner: owner(request),
      tags: body.tags ?? [],
      userMetadata: body.user_metadata ?? {},
      sdkVersion: body.sdk_version ?? 'unknown',
      projectId: body.project_id ?? null,
    });
    return { type: 'create_session', session_id: session.sessionId };
  });

  app.post('/api/v1/session_heartbeat', { schema: { body: SessionIdBody, response: HeartbeatReply } }, async (request) => {
    const state = await store.sessions.heartbeat(request.body.session_id, owner(request), Date.now());
    if (state === 'missing') throw notFound('session', request.body.session_id);
    if (state === 'finished') throw gone(`session ${request.body.session_id} is finished`);
    return { type: 'session_heartbeat' };
  });

  // `ServiceClient.close()` (SDK >= 0.32). The reason is accepted and not kept: nothing reads it back.
  // Later heartbeats get 410, which stops the SDK's heartbeat loop.
  app.post<{ Params: { sessionId: string } }>('/api/v1/sessions/:sessionId/finish', { schema: { body: FinishSessionBody, response: FinishSessionReply } }, async (request) => {
    const finished = await store.sessions.finish(request.params.sessionId, owner(request), Date.now());
    if (!finished) throw notFound('session', request.params.sessionId);
    return { type: 'finish_session', session_id: request.params.sessionId };
  });

  app.get('/api/v1/get_server_capabilities', { schema: { response: CapabilitiesReply } }, async () => {
    await services.catalogue.refresh(); // lists models added since start
    return {
      supported_models: services.models.map((m) => ({ model_name: m.model_name, max_context_length: m.max_context_length, trainable: true, sampleable: true })),
    };
  });

  app.get('/api/v1/healthz', { schema: { response: HealthReply } }, async () => ({ status: 'ok' }));

  // Lathe's own: the workers (local and remote), their devices and the base models they hold. Behind
  // the API key (unlike healthz): it names hosts and devices.
  app.get('/api/v1/lathe/workers', { schema: { hide: true } }, async () => ({ workers: await services.pool.workersInfo() }));

  // A sink: the SDK retries a rejected batch forever, so accept everything well-formed.
  app.post('/api/v1/telemetry', { schema: { body: TelemetryBody, response: TelemetryReply } }, async () => ({ status: 'accepted' }));

  app.put<{ Params: { sessionId: string } }>('/api/v1/sessions/:sessionId/project', { schema: { body: ProjectBody } }, async (request) => {
    const ok = await store.sessions.setProject(request.params.sessionId, owner(request), (request.body as { project_id: string }).project_id);
    if (!ok) throw notFound('session', request.params.sessionId);
    return {};
  });
}

export type { FastifyInstance };
