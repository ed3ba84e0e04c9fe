/**
 * @module Per-API-key queue bounds of a lane: how many requests (and bytes) each key has queued or
 * reserved there, and whether it may queue another. Training and sampling share one bound.
 */
import type { Reservation } from './jobs.js';

/**
 * @example
 * const keys = new KeyLoad('lathe/tiny-qwen3', 1024, 1 << 30);
 * keys.full('key-1', 100) ?? keys.charge({ owner: 'key-1', modelId: '', waiting: 0, queued: 1, bytes: 100 });
 * keys.uncharge('key-1', 100); // once it ran
 */
export class KeyLoad {
  private readonly load = new Map<string, { count: number; bytes: number }>();

  constructor(
    private readonly baseModel: string,
    private readonly maxQueuedPerKey: number,
    private readonly maxQueuedBytesPerKey: number,
  ) {}

  /** Why `owner` may not queue another request of `bytes` here, or null if it may. */
  full(owner: string, bytes: number): string | null {
    const load = this.load.get(owner);
    if (!load) return null; // one request, whatever its size, is always admitted
    if (load.count >= this.maxQueuedPerKey) {
      return `this API key already has ${load.count} requests queued for ${this.baseModel} (at most ${this.maxQueuedPerKey} per key); wait for some to finish before sending more`;
    }
    if (load.bytes + bytes > this.maxQueuedBytesPerKey) {
      return `this API key's requests queued for ${this.baseModel} already hold ${load.bytes} bytes (at most ${this.maxQueuedBytesPerKey} per key); wait for some to finish before sending more`;
    }
    return null;
  }

  /** Counts a queued (or reserved) request against its key's bound. */
  charge(reservation: Reservation): Reservation {
    const load = this.load.get(reservation.owner) ?? { count: 0, bytes: 0 };
    load.count++;
    load.bytes += reservation.bytes;
    this.load.set(reservation.owner, load);
    return reservation;
  }

  /** A request of `owner` left the queue (ran, failed, or its place was given back). */
  uncharge(owner: string, bytes: number): void {
    const load = this.load.get(owner);
    if (!load) return;
    load.count--;
    load.bytes -= bytes;
    if (load.count <= 0) this.load.delete(owner);
  }
}
