/**
 * @module Response schemas of the main routes, for the OpenAPI document. Each one allows further
 * properties, so a schema documents the reply and never drops a field the handler sends.
 */
import { Type, type TObject, type TProperties } from 'typebox';

/** An object reply with at least `properties`. */
function reply<P extends TProperties>(properties: P): TObject<P> {
  return Type.Object(properties, { additionalProperties: true });
}

/** The acknowledgement of a queued request (Tinker's `UntypedAPIFuture`): poll `retrieve_future` with its id. */
export const FutureReply = { 200: reply({ request_id: Type.String(), model_id: Type.String() }) };

export const CreateSessionReply = { 200: reply({ type: Type.String(), session_id: Type.String() }) };
export const HeartbeatReply = { 200: reply({ type: Type.String() }) };
export const FinishSessionReply = { 200: reply({ type: Type.String(), session_id: Type.String() }) };
export const CapabilitiesReply = {
  200: reply({
    supported_models: Type.Array(reply({ model_name: Type.String(), max_context_length: Type.Integer(), trainable: Type.Boolean(), sampleable: Type.Boolean() })),
  }),
};
export const HealthReply = { 200: reply({ status: Type.String() }) };
export const TelemetryReply = { 200: reply({ status: Type.String() }) };
