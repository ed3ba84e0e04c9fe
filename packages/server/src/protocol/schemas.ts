/**
 * @module TypeBox schemas of the JSON request bodies of Tinker's `/api/v1` (tinker-protocol.md §4).
 * They validate requests and generate the OpenAPI document. Request objects accept extra keys,
 * because newer SDKs add fields that older servers must ignore.
 */
import { Type, type Static } from 'typebox';

const Open = { additionalProperties: true } as const;

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
    model_seq_id: Type.Integer({ minimum: 0 }),
    base_model: Type.String(),
    user_metadata: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    lora_config: Type.Optional(LoraConfigSchema),
  },
  Open,
);

export const ModelIdBody = Type.Object({ model_id: Type.String() }, Open);

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
    loss_fn_config: Type.Optional(Type.Union([Type.Null(), Type.Record(Type.String(), Type.Number())])),
  },
  Open,
);

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

export const OptimStepBody = Type.Object({ model_id: Type.String(), seq_id: Type.Integer({ minimum: 1 }), adam_params: AdamParamsSchema }, Open);

export const SaveWeightsBody = Type.Object(
  {
    model_id: Type.String(),
    seq_id: Type.Integer({ minimum: 1 }),
    path: Type.String(),
    ttl_seconds: Type.Optional(Type.Union([Type.Null(), Type.Integer()])),
    overwrite: Type.Optional(Type.Boolean()),
  },
  Open,
);

export const SaveWeightsForSamplerBody = Type.Object(
  {
    model_id: Type.String(),
    seq_id: Type.Integer({ minimum: 1 }),
    path: Type.Optional(Type.String()),
    sampling_session_seq_id: Type.Optional(Type.Integer({ minimum: 0 })),
    ttl_seconds: Type.Optional(Type.Union([Type.Null(), Type.Integer()])),
  },
  Open,
);

export const LoadWeightsBody = Type.Object(
  { model_id: Type.String(), seq_id: Type.Integer({ minimum: 1 }), path: Type.String(), optimizer: Type.Optional(Type.Boolean()) },
  Open,
);

export const WeightsInfoBody = Type.Object({ tinker_path: Type.String() }, Open);

export const CreateSamplingSessionBody = Type.Object(
  {
    session_id: Type.String(),
    sampling_session_seq_id: Type.Integer({ minimum: 0 }),
    base_model: Type.Optional(Type.String()),
    model_path: Type.Optional(Type.String()),
  },
  Open,
);

export const SamplingParamsSchema = Type.Object(
  {
    max_tokens: Type.Optional(Type.Union([Type.Null(), Type.Integer()])),
    seed: Type.Optional(Type.Union([Type.Null(), Type.Integer()])),
    stop: Type.Optional(Type.Union([Type.Null(), Type.String(), Type.Array(Type.String()), Type.Array(Type.Integer())])),
    temperature: Type.Optional(Type.Number()),
    top_k: Type.Optional(Type.Integer()),
    top_p: Type.Optional(Type.Number()),
  },
  Open,
);

export const SampleBody = Type.Object(
  {
    sampling_session_id: Type.Optional(Type.String()),
    base_model: Type.Optional(Type.String()),
    model_path: Type.Optional(Type.String()),
    seq_id: Type.Optional(Type.Integer({ minimum: 0 })),
    num_samples: Type.Optional(Type.Integer()),
    prompt: Type.Unknown(),
    sampling_params: Type.Optional(SamplingParamsSchema),
    prompt_logprobs: Type.Optional(Type.Boolean()),
    topk_prompt_logprobs: Type.Optional(Type.Integer()),
  },
  Open,
);
export type SampleBodyWire = Static<typeof SampleBody>;

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

export const TtlBody = Type.Object({ ttl_seconds: Type.Union([Type.Null(), Type.Integer()]) }, Open);

export const ProjectBody = Type.Object({ project_id: Type.String() }, Open);

export const UntypedFuture = Type.Object({
  request_id: Type.String(),
  model_id: Type.Optional(Type.String()),
  sample_sequence_ids: Type.Optional(Type.Array(Type.String())),
});
