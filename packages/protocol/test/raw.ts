// Raw messages for the codec tests, built and read by protobufjs from tinker_public.proto: an
// implementation independent of ours, and the only way to make inputs our encoders never produce
// (other dtypes, sparse tensors, images, unknown fields, ...).
import { readFileSync } from 'node:fs';
import protobuf from 'protobufjs';
import type { TensorData } from '../src/index.js';

export const root = protobuf.parse(readFileSync(new URL('../src/tinker_public.proto', import.meta.url), 'utf8'), { keepCase: true }).root;

/** Encodes `value` as the message `name` (snake_case fields). */
export const raw = (name: string, value: Record<string, unknown>): Uint8Array => root.lookupType(`tinker_public.${name}`).encode(value).finish();

/** Decodes `body` as the message `name`, int64s as numbers, defaults filled in, oneofs named. */
export const rawDecode = (name: string, body: Uint8Array): Record<string, any> =>
  root.lookupType(`tinker_public.${name}`).toObject(root.lookupType(`tinker_public.${name}`).decode(body), { longs: Number, defaults: true, oneofs: true });

/** The bytes of a typed array (a little-endian host, as every test machine is). */
export const bytes = (a: Int32Array | Float32Array | BigInt64Array | Uint16Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

export const i64 = (...v: number[]): TensorData => ({ dtype: 'int64', shape: [v.length], data: BigInt64Array.from(v, BigInt) });
export const f32 = (...v: number[]): TensorData => ({ dtype: 'float32', shape: [v.length], data: Float32Array.from(v) });
export const shaped = (t: TensorData, shape: number[]): TensorData => ({ ...t, shape });
