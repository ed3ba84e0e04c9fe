/**
 * @module Length-prefixed msgpack frames: a big-endian u32 byte length, then one msgpack map.
 */
import { decode, encode } from '@msgpack/msgpack';

/** Frames above this size are refused on both sides. */
export const MAX_FRAME_BYTES = 1 << 30;

/** Encodes one message as a frame. */
export function encodeFrame(message: Record<string, unknown>): Uint8Array {
  const body = encode(message);
  const frame = new Uint8Array(4 + body.byteLength);
  new DataView(frame.buffer).setUint32(0, body.byteLength, false);
  frame.set(body, 4);
  return frame;
}

/**
 * Reassembles frames from a byte stream that arrives in arbitrary pieces.
 *
 * @example
 * const reader = new FrameReader();
 * socket.on('data', (chunk) => { for (const msg of reader.push(chunk)) handle(msg); });
 */
export class FrameReader {
  private buffered: Uint8Array[] = [];
  private size = 0;

  push(chunk: Uint8Array): Record<string, unknown>[] {
    this.buffered.push(chunk);
    this.size += chunk.byteLength;
    const messages: Record<string, unknown>[] = [];
    for (;;) {
      if (this.size < 4) break;
      const head = this.peek(4);
      const length = new DataView(head.buffer, head.byteOffset, 4).getUint32(0, false);
      if (length > MAX_FRAME_BYTES) throw new Error(`frame of ${length} bytes exceeds ${MAX_FRAME_BYTES}`);
      if (this.size < 4 + length) break;
      const frame = this.take(4 + length);
      const message = decode(frame.subarray(4));
      if (message === null || typeof message !== 'object' || Array.isArray(message)) {
        throw new Error('frame body is not a msgpack map');
      }
      messages.push(message as Record<string, unknown>);
    }
    return messages;
  }

  private peek(n: number): Uint8Array {
    const first = this.buffered[0];
    if (first !== undefined && first.byteLength >= n) return first;
    this.buffered = [concat(this.buffered, this.size)];
    return this.buffered[0] as Uint8Array;
  }

  private take(n: number): Uint8Array {
    const all = this.peek(n);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.buffered = rest.byteLength ? [rest, ...this.buffered.slice(1)] : this.buffered.slice(1);
    this.size -= n;
    return out;
  }
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}
