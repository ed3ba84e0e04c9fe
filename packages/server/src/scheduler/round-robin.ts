/**
 * @module Fair picking for a lane's cycles: round-robin across API keys, least recently served first.
 */

/**
 * Picks items round-robin across keys, least recently `served` key first (`byKey` lists each key's
 * items in the order to take them), one per key per round, until `budget` is spent. An item has
 * `units` (samples; 1 for a training request) of `cost` each and may be taken in part; the first
 * pick takes at least one unit whatever it costs, later picks only what fits.
 */
export function roundRobin<T>(byKey: Map<string, T[]>, served: Map<string, number>, budget: number, size: (item: T) => { cost: number; units: number }): { item: T; units: number }[] {
  const keys = [...byKey.keys()].sort((a, b) => (served.get(a) ?? 0) - (served.get(b) ?? 0));
  const picked: { item: T; units: number }[] = [];
  let left = budget;
  for (let round = 0; ; round++) {
    let more = false;
    for (const key of keys) {
      const item = byKey.get(key)![round];
      if (item === undefined) continue;
      more = true;
      const { cost, units } = size(item);
      const fit = cost > 0 ? Math.min(units, Math.floor(left / cost)) : units;
      const take = picked.length === 0 ? Math.max(1, fit) : fit;
      if (take <= 0) continue;
      picked.push({ item, units: take });
      left -= take * cost;
    }
    if (!more) return picked;
  }
}
