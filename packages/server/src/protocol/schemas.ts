/**
 * @module TypeBox schemas of the JSON request bodies of Tinker's `/api/v1` (tinker-protocol.md §4).
 * They validate requests and generate the OpenAPI document. Request objects accept extra keys,
 * because newer SDKs add fields that older servers must ignore.
 */
import { Type, type Static } from 'typebox';

const Open = { additionalProperties: true } as const;

/**
 * A `seq_id`-like counter: a whole number from `minimum` up to 2^53 - 1. Larger ones cannot be
 * told apart once parsed (JSON.parse rounds 2^53 + 1 to 2^53), so they are refused, not rounded.
 */
const Counter = (minimum: number) => Type.Integer({ minimum, maximum: Number.MAX_SAFE_INTEGER });

export const SdkVersionBody = Type.Object({ sdk_version: Type.Optional(Type.String()) }, Open);

export const CreateSessionBody = Type.Object(
  {
    tags: Type.Optional(Type.Array(Type.String())),
    user_metadata: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    sdk_version: Type.Optional(Type.String()),
    project_id: Type.Optional(Type.String()),
  },
  Open,
);

export const SessionIdBody = Type.Object({ session_id: Type.String() }, Open);

/**
 * `POST /sessions/{id}/finish` (SDK >= 0.32; the body was not seen, docs/protocol.md §4.1): the
 * 0.38 `ClientSessionFinished` shape is the guess, every key optional, an empty body allowed.
 */
export const FinishSessionBody = Type.Union([
  Type.Null(),
  Type.Object(
    {
      reason: Type.Optional(Type.Union([Type.Null(), Type.String(), Type.Object({ type: Type.String() }, Open)])),
      detail: Type.Optional(Type.Union([Type.Null(), Type.String()])),
    },
    Open,
  ),
]);

/**
 * String-valued metadata of a checkpoint, as the SDK sends and validates it (`{str: str}`). The
 * values are checked by the route, so that a refusal takes its `seq_id`'s place.
 */
const UserMetadata = Type.Union([Type.Null(), Type.Record(Type.String(), Type.Unknown())]);

/** Tinker's `OptimizerConfig` (`{"type": "adamw"}` / `{"type": "dimuon", "version": 1}`); checked in detail by the route. */
const OptimizerConfigJson = Type.Union([Type.Null(), Type.Object({ type: Type.String() }, Open)]);

export const LoraConfigSchema = Type.Object(
  {
    rank: Type.Integer(),
    seed: Type.Optional(Type.Union([Type.Null(), Type.Integer()])),
    train_unembed: Type.Optional(Type.Boolean()),
    train_mlp: Type.Optional(Type.Boolean()),
    train_attn: Type.Optional(Type.Boolean()),
  },
  Open,
);
export type LoraConfigWire = Static<typeof LoraConfigSchema>;

export const CreateModelBody = Type.Object(
  {
    session_id: Type.String(),
    model_seq_id: Counter(0),
    base_model: Type.String(),
    user_metadata: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    lora_config: Type.Optional(LoraConfigSchema),
    /** The run's optimizer (SDK >= 0.29), fixed for its life; default AdamW. */
    optimizer_config: Type.Optional(OptimizerConfigJson),
  },
  Open,
);

export const ModelIdBody = Type.Object({ model_id: Type.String() }, Open);

/** Longest accepted checkpoint TTL: ten years, in seconds (longer ones overflow dates). */
export const MAX_TTL_SECONDS = 10 * 365 * 24 * 3600;

/** `ttl_seconds`: a positive whole number of seconds up to {@link MAX_TTL_SECONDS}, or null for none. */
const TtlSeconds = Type.Union([Type.Null(), Type.Integer({ minimum: 1, maximum: MAX_TTL_SECONDS })]);

/** A JSON tensor (TensorData) or a plain number list; checked in detail by the codec. */
export const TensorJson = Type.Unknown();

export const DatumJson = Type.Object(
  { model_input: Type.Unknown(), loss_fn_inputs: Type.Record(Type.String(), TensorJson) },
  Open,
);

export const ForwardBackwardInputJson = Type.Object(
  {
    data: Type.Array(DatumJson),
    loss_fn: Type.String(),
    /** Numbers (checked by the route, so that a refusal takes its `seq_id`'s place). */
    loss_fn_config: Type.Optional(Type.Union([Type.Null(), Type.Record(Type.String(), Type.Unknown())])),
  },
  Open,
);

/** The JSON body of `forward_backward` (older SDKs; newer ones send protobuf) and of `forward`. */
export const ForwardBackwardBody = Type.Object(
  {
    model_id: Type.String(),
    seq_id: Counter(1),
    forward_backward_input: ForwardBackwardInputJson,
    forward_only: Type.Optional(Type.Boolean()),
  },
  Open,
);
export const ForwardBody = Type.Object({ model_id: Type.String(), seq_id: Counter(1), forward_input: ForwardBackwardInputJson }, Open);

export const AdamParamsSchema = Type.Object(
  {
    learning_rate: Type.Optional(Type.Number()),
    beta1: Type.Optional(Type.Number()),
    beta2: Type.Optional(Type.Number()),
    eps: Type.Optional(Type.Number()),
    weight_decay: Type.Optional(Type.Number()),
    grad_clip_norm: Type.Optional(Type.Number()),
  },
  Open,
);

/**
 * Dimuon step parameters (SDK >= 0.29): `{type: "dimuon", learning_rate, grad_clip_norm?, beta1?,
 * damping?, rank_lr_correction_exponent?}`. Documentation only: the route checks them, so that a
 * refusal takes its `seq_id`'s place.
 */
export const DimuonParamsSchema = Type.Object({}, { ...Open, description: 'Dimuon: {type: "dimuon", learning_rate, grad_clip_norm?, beta1?, damping?, rank_lr_correction_exponent?}' });

/**
 * Exactly one of `adam_params` (AdamW), `optimizer_params` (Dimuon) or `optim_params` (either, told
 * apart by `type`; docs/protocol.md §3.2); the route checks them against the run's optimizer.
 */
export const OptimStepBody = Type.Object(
  {
    model_id: Type.String(),
    seq_id: Counter(1),
    adam_params: Type.Optional(Type.Union([Type.Null(), AdamParamsSchema])),
    optimizer_params: Type.Optional(Type.Union([Type.Null(), DimuonParamsSchema])),
    optim_params: Type.Optional(Type.Union([Type.Null(), Type.Object({}, Open)])),
  },
  Open,
);

export const SaveWeightsBody = Type.Object(
  {
    model_id: Type.String(),
    seq_id: Counter(1),
    path: Type.String(),
    ttl_seconds: Type.Optional(TtlSeconds),
    overwrite: Type.Optional(Type.Boolean()),
    user_metadata: Type.Optional(UserMetadata),
  },
  Open,
);

/** `save_weights_external` (SDK >= 0.28): the adapter as a Hugging Face PEFT folder. */
export const SaveWeightsExternalBody = Type.Object(
  { model_id: Type.String(), seq_id: Counter(1), path: Type.String(), ttl_seconds: Type.Optional(TtlSeconds), user_metadata: Type.Optional(UserMetadata) },
  Open,
);

/** `copy_weights` (SDK >= 0.26): synchronous, into a new run of the caller's session. */
export const CopyWeightsBody = Type.Object(
  {
    session_id: Type.String(),
    model_seq_id: Counter(0),
    source_path: Type.String(),
    ttl_seconds: Type.Optional(TtlSeconds),
    /** Accepted and unused: only the caller's own checkpoints can be copied here. */
    weights_access_token: Type.Optional(Type.Union([Type.Null(), Type.String()])),
  },
  Open,
);

/** `GET /billing/usage/checkpoints/current`. */
export const BillingUsageQuery = Type.Object({ project_id: Type.Optional(Type.String()) }, Open);

export const SaveWeightsForSamplerBody = Type.Object(
  {
    model_id: Type.String(),
    seq_id: Counter(1),
    path: Type.Optional(Type.String()),
    sampling_session_seq_id: Type.Optional(Counter(0)),
    ttl_seconds: Type.Optional(TtlSeconds),
    user_metadata: Type.Optional(UserMetadata),
  },
  Open,
);

export const LoadWeightsBody = Type.Object(
  {
    model_id: Type.String(),
    seq_id: Counter(1),
    path: Type.String(),
    optimizer: Type.Optional(Type.Boolean()),
    /** SDK >= 0.29: must be the run's own optimizer (a run's optimizer never changes). */
    optimizer_config: Type.Optional(OptimizerConfigJson),
  },
  Open,
);

export const WeightsInfoBody = Type.Object({ tinker_path: Type.String() }, Open);

export const CreateSamplingSessionBody = Type.Object(
  {
    session_id: Type.String(),
    sampling_session_seq_id: Counter(0),
    base_model: Type.Optional(Type.String()),
    model_path: Type.Optional(Type.String()),
  },
  Open,
);

/** The worker's limits (worker/lathe_worker/sampler.py). */
export const MAX_NUM_SAMPLES = 128;
export const MAX_TOPK_PROMPT_LOGPROBS = 100;

/** JSON cannot carry NaN or infinities, so a schema-checked number is finite. */
export const SamplingParamsSchema = Type.Object(
  {
    max_tokens: Type.Optional(Type.Union([Type.Null(), Type.Integer({ minimum: 1 })])),
    seed: Type.Optional(Type.Union([Type.Null(), Type.Integer()])),
    stop: Type.Optional(Type.Union([Type.Null(), Type.String(), Type.Array(Type.String()), Type.Array(Type.Integer())])),
    temperature: Type.Optional(Type.Number({ minimum: 0 })),
    /** -1 turns top-k off. */
    top_k: Type.Optional(Type.Union([Type.Literal(-1), Type.Integer({ minimum: 1 })])),
    top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
  },
  Open,
);

export const SampleBody = Type.Object(
  {
    // The SDK leaves out unset optional keys; other clients may send them as null.
    sampling_session_id: Type.Optional(Type.Union([Type.Null(), Type.String()])),
    base_model: Type.Optional(Type.Union([Type.Null(), Type.String()])),
    model_path: Type.Optional(Type.Union([Type.Null(), Type.String()])),
    /**
     * Unpickled SDK sampling clients count from `1e9 * k` (k up to 1e9), beyond 2^53: accepted up
     * to 2^63, but only a safe integer deduplicates retries (larger ones cannot be told apart).
     */
    seq_id: Type.Optional(Type.Union([Type.Null(), Type.Integer({ minimum: 0, maximum: 2 ** 63 })])),
    num_samples: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_NUM_SAMPLES })),
    prompt: Type.Unknown(),
    sampling_params: Type.Optional(SamplingParamsSchema),
    prompt_logprobs: Type.Optional(Type.Union([Type.Null(), Type.Boolean()])),
    topk_prompt_logprobs: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_TOPK_PROMPT_LOGPROBS })),
    // Sampling extras (docs/protocol.md §5.1); 0 / null = off.
    topk_sample_logprobs: Type.Optional(Type.Union([Type.Null(), Type.Integer({ minimum: 0, maximum: MAX_TOPK_PROMPT_LOGPROBS })])),
    prompt_alt_tokens_k: Type.Optional(Type.Union([Type.Null(), Type.Integer({ minimum: 0, maximum: MAX_TOPK_PROMPT_LOGPROBS })])),
    /** int64 TensorData [len(prompt) - 1, K], dense or CSR; checked in detail by the route. */
    target_prompt_logprobs: Type.Optional(Type.Unknown()),
    prompt_logprobs_last_n: Type.Optional(Type.Union([Type.Null(), Type.Integer({ minimum: 0 })])),
    /** Accepted and ignored: no result field exists for it. */
    record_stability_info: Type.Optional(Type.Union([Type.Null(), Type.Boolean()])),
  },
  Open,
);
export type SampleBodyWire = Static<typeof SampleBody>;

/** `retrieve_futures`: the completions of one sampling session's clone after a cursor. */
export const RetrieveFuturesBody = Type.Object(
  {
    target: Type.Object(
      {
        type: Type.Literal('sampling_session'),
        sampling_session_id: Type.String(),
        cloned_sampler_id: Type.Optional(Type.Integer({ minimum: 0, maximum: 9_000_000 })),
      },
      Open,
    ),
    prev_cursor: Type.Optional(Type.Integer({ minimum: 0 })),
    /** Seconds to hold the poll at most (the server's own limit applies too). */
    timeout: Type.Optional(Type.Union([Type.Null(), Type.Number({ minimum: 0 })])),
  },
  Open,
);

export const CancelFutureBody = Type.Object({ request_id: Type.String() }, Open);

export const JoinSamplingSessionBody = Type.Object({ sampling_session_id: Type.String() }, Open);

export const RetrieveFutureBody = Type.Object({ request_id: Type.String(), allow_metadata_only: Type.Optional(Type.Boolean()) }, Open);

export const TelemetryBody = Type.Object({ events: Type.Optional(Type.Array(Type.Unknown())) }, Open);

/** Query strings stay strings (no coercion); {@link paging} parses them. */
export const PagingQuery = Type.Object(
  { limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })), offset: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$' })) },
  Open,
);

/** `limit`/`offset` from a validated query, with defaults and a cap. */
export function paging(query: Static<typeof PagingQuery>, defaultLimit: number): { limit: number; offset: number } {
  return { limit: Math.min(1000, Math.max(1, Number(query.limit ?? defaultLimit))), offset: Number(query.offset ?? 0) };
}

export const TtlBody = Type.Object({ ttl_seconds: TtlSeconds }, Open);

export const ProjectBody = Type.Object({ project_id: Type.String() }, Open);
