/**
 * @module The protobuf wire format, by hand: a field writer, a field reader, and little-endian
 * packed arrays. Only what `tinker_public.proto` needs: varints, fixed64 doubles and
 * length-delimited fields are written; the reader skips any field it does not know (fixed32
 * included), as protobuf readers must. Packed arrays are little-endian whatever the host.
 */

/**
 * A body (protobuf, or a JSON tensor / model input) that cannot be decoded; the message says what
 * is wrong and where. Servers answer it with a 400, clients with a response-validation error.
 *
 * @example
 * try { decodeForwardBackwardRequest(body); }
 * catch (e) { if (e instanceof ProtoDecodeError) console.error(e.message); }
 */
export class ProtoDecodeError extends Error {
  override readonly name = 'ProtoDecodeError';
}

// ---------------------------------------------------------------------------------------------
// Little-endian packed arrays

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The typed arrays that travel as packed little-endian bytes. */
export type PackedArray = Float32Array | BigInt64Array | Int32Array | Uint16Array;

function swapped(bytes: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += width) {
    for (let j = 0; j < width; j++) out[i + j] = bytes[i + width - 1 - j]!;
  }
  return out;
}

/**
 * The little-endian bytes of a typed array (a view, not a copy, on a little-endian host).
 *
 * @example
 * leBytes(Int32Array.of(1)); // Uint8Array [1, 0, 0, 0]
 */
export function leBytes(values: PackedArray): Uint8Array {
  const view = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return LITTLE_ENDIAN_HOST ? view : swapped(view, values.BYTES_PER_ELEMENT);
}

/** An aligned host-order copy of little-endian bytes (decoded fields are views at any offset). */
function hostBuffer(bytes: Uint8Array, width: number, what: string, typeName: string): ArrayBuffer {
  if (bytes.length % width !== 0) throw new ProtoDecodeError(`${what}: ${bytes.length} bytes is not a whole number of ${typeName} values`);
  // `new Uint8Array(view)` copies into a fresh buffer (Buffer#slice would share Node's pool).
  return (LITTLE_ENDIAN_HOST ? new Uint8Array(bytes) : swapped(bytes, width)).buffer as ArrayBuffer;
}

/** Packed little-endian int32 values. */
export const readInt32s = (bytes: Uint8Array, what: string): Int32Array => new Int32Array(hostBuffer(bytes, 4, what, 'int32'));
/** Packed little-endian float32 values. */
export const readFloat32s = (bytes: Uint8Array, what: string): Float32Array => new Float32Array(hostBuffer(bytes, 4, what, 'float32'));
/** Packed little-endian int64 values. */
export const readInt64s = (bytes: Uint8Array, what: string): BigInt64Array => new BigInt64Array(hostBuffer(bytes, 8, what, 'int64'));
/** Packed little-endian bfloat16 values, as their 16 bits. */
export const readBfloat16Bits = (bytes: Uint8Array, what: string): Uint16Array => new Uint16Array(hostBuffer(bytes, 2, what, 'bfloat16'));

/** Packed int64 indices or offsets as numbers; each must be a safe integer. */
export function readIndices(bytes: Uint8Array, what: string): number[] {
  return Array.from(readInt64s(bytes, what), (v) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n)) throw new ProtoDecodeError(`${what}: value ${v} is out of range`);
    return n;
  });
}

/**
 * Token ids as an `Int32Array`, refusing any that is not an int32 (a programming error on the
 * encoding side, so a `RangeError`).
 *
 * @example
 * int32Tokens([1, 2], 'tokens'); // Int32Array [1, 2]
 */
export function int32Tokens(tokens: readonly number[] | Int32Array, what: string): Int32Array {
  if (tokens instanceof Int32Array) return tokens;
  const out = Int32Array.from(tokens);
  // The conversion wraps and truncates silently, so compare back.
  for (let i = 0; i < out.length; i++) {
    if (out[i] !== tokens[i]) throw new RangeError(`${what}[${i}] = ${tokens[i]} is not an int32 token id`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/** Wire types: varint, fixed64, length-delimited, fixed32. */
export type WireType = 0 | 1 | 2 | 5;

/**
 * Accumulates the fields of one message; a nested message is written into its own writer first.
 * Callers leave out proto3 defaults themselves (so the bytes match Google's serializer).
 *
 * @example
 * const w = new Writer();
 * w.string(1, 'S:train:0');
 * w.uint(2, 7);
 * const body = w.finish();
 */
export class Writer {
  private chunks: Uint8Array[] = [];
  private scratch = new Uint8Array(64);
  private pos = 0;
  private length = 0;

  private flush(): void {
    if (this.pos > 0) {
      this.chunks.push(this.scratch.slice(0, this.pos));
      this.pos = 0;
    }
  }

  private byte(b: number): void {
    if (this.pos === this.scratch.length) this.flush();
    this.scratch[this.pos++] = b;
    this.length++;
  }

  /** A varint: non-negative up to 2^53, or negative (two's complement, 10 bytes, as int32/int64 are). */
  private varint(value: number): void {
    if (value < 0) {
      let b = BigInt.asUintN(64, BigInt(value));
      while (b >= 0x80n) {
        this.byte(Number(b & 0x7fn) | 0x80);
        b >>= 7n;
      }
      this.byte(Number(b));
      return;
    }
    let v = value;
    while (v >= 0x80) {
      this.byte((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.byte(v);
  }

  private tag(field: number, wireType: WireType): void {
    this.varint(field * 8 + wireType);
  }

  /** A varint field (int32, int64, uint32, bool, enum). */
  uint(field: number, value: number): void {
    this.tag(field, 0);
    this.varint(value);
  }

  /** A length-delimited field holding `data` (kept by reference until `finish`). */
  bytes(field: number, data: Uint8Array): void {
    this.tag(field, 2);
    this.varint(data.length);
    this.flush();
    this.chunks.push(data);
    this.length += data.length;
  }

  string(field: number, value: string): void {
    this.bytes(field, textEncoder.encode(value));
  }

  double(field: number, value: number): void {
    this.tag(field, 1);
    const buf = new DataView(new ArrayBuffer(8));
    buf.setFloat64(0, value, true);
    for (let i = 0; i < 8; i++) this.byte(buf.getUint8(i));
  }

  message(field: number, inner: Writer): void {
    this.bytes(field, inner.finish());
  }

  /** A packed repeated varint field; nothing when empty. */
  packedUints(field: number, values: readonly number[]): void {
    if (values.length === 0) return;
    const inner = new Writer();
    for (const v of values) inner.varint(v);
    this.message(field, inner);
  }

  /** A `map<string, V>` entry as field `field`: key and value are always written, as Google's serializer does. */
  mapEntry(field: number, key: string, value: (entry: Writer) => void): void {
    const entry = new Writer();
    entry.string(1, key);
    value(entry);
    this.message(field, entry);
  }

  finish(): Uint8Array {
    this.flush();
    if (this.chunks.length === 1) return this.chunks[0]!;
    const out = new Uint8Array(this.length);
    let offset = 0;
    for (const c of this.chunks) {
      out.set(c, offset);
      offset += c.length;
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Reader

/**
 * Iterates the fields of one message. Errors name the outermost message (`what`), as in
 * "malformed protobuf ForwardBackwardRequest: truncated varint".
 *
 * @example
 * const r = new Reader(body, 'SampleResponse');
 * for (const [field, wireType] of r.fields()) {
 *   if (field === 4 && wireType === 0) cached = r.int();
 *   else r.skip(wireType);
 * }
 */
export class Reader {
  private pos = 0;
  constructor(
    private readonly buf: Uint8Array,
    readonly what: string,
  ) {}

  private fail(message: string): never {
    throw new ProtoDecodeError(`malformed protobuf ${this.what}: ${message}`);
  }

  /** Yields each field's number and wire type; the caller reads or skips its value before the next. */
  *fields(): Generator<[number, number]> {
    while (this.pos < this.buf.length) {
      const t = this.varint();
      if (t < 8) this.fail(`invalid tag ${t}`);
      yield [Math.floor(t / 8), t % 8];
    }
  }

  /** A varint as a number: exact up to 2^53; ten-byte varints (negative int32/int64) come back negative. */
  varint(): number {
    // Numbers are exact for the first seven bytes (49 bits); longer varints go through a bigint.
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 7; i++) {
      if (this.pos >= this.buf.length) this.fail('truncated varint');
      const b = this.buf[this.pos++]!;
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 128;
    }
    let big = BigInt(result);
    for (let shift = 49n; shift < 70n; shift += 7n) {
      if (this.pos >= this.buf.length) this.fail('truncated varint');
      const b = this.buf[this.pos++]!;
      big |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return Number(BigInt.asIntN(64, big));
    }
    return this.fail('varint longer than 10 bytes');
  }

  /** An int64 / int32 varint that must be a safe integer. */
  int(what: string): number {
    const n = this.varint();
    if (!Number.isSafeInteger(n)) throw new ProtoDecodeError(`${what}: ${n} is out of range`);
    return n;
  }

  bytes(): Uint8Array {
    const n = this.varint();
    if (n < 0 || this.pos + n > this.buf.length) this.fail('length-delimited field runs past the end');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A nested message's reader (errors keep the outer message's name). */
  message(): Reader {
    return new Reader(this.bytes(), this.what);
  }

  string(): string {
    return textDecoder.decode(this.bytes());
  }

  double(): number {
    if (this.pos + 8 > this.buf.length) this.fail('truncated fixed64');
    const value = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 8).getFloat64(0, true);
    this.pos += 8;
    return value;
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 2:
        this.bytes();
        return;
      case 1:
      case 5:
        this.pos += wireType === 1 ? 8 : 4;
        if (this.pos > this.buf.length) this.fail('truncated fixed-width field');
        return;
      default:
        this.fail(`unsupported wire type ${wireType}`);
    }
  }

  /** One value of a repeated int64 field, packed (wire type 2) or one per tag (wire type 0). */
  repeatedInts(wireType: number, into: number[], what: string): void {
    if (wireType === 0) into.push(this.int(what));
    else if (wireType === 2) {
      const inner = this.message();
      for (; inner.pos < inner.buf.length; ) into.push(inner.int(what));
    } else this.skip(wireType);
  }

  /** A `map<string, V>` entry: its key, and its value read by `readValue` (or `empty` when absent). */
  mapEntry<V>(readValue: (r: Reader, wireType: number) => V, empty: V): [string, V] {
    const r = this.message();
    let key = '';
    let value = empty;
    for (const [field, wt] of r.fields()) {
      if (field === 1 && wt === 2) key = r.string();
      else if (field === 2) value = readValue(r, wt);
      else r.skip(wt);
    }
    return [key, value];
  }
}
