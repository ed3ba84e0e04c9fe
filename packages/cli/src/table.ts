/**
 * @module The CLI's listings: the first items of a paged listing, plain-text tables and sizes.
 */

/**
 * The first `limit` items of an async iterable (a paged listing), fetching no further pages.
 *
 * @example
 * const runs = await take(rest.iterTrainingRuns({ limit: 50 }), 50);
 */
export async function take<T>(items: AsyncIterable<T>, limit: number): Promise<T[]> {
  const out: T[] = [];
  if (limit <= 0) return out;
  for await (const item of items) {
    out.push(item);
    if (out.length >= limit) break;
  }
  return out;
}

/**
 * Left-aligned columns separated by two spaces; the first row is the header. The last column is
 * not padded, so lines carry no trailing blanks.
 *
 * @example
 * formatTable([['NAME', 'SIZE'], ['a', '1 KB']]); // 'NAME  SIZE\na     1 KB'
 */
export function formatTable(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}

/**
 * A byte count for people: `512 B`, `1.5 KB`, `2.31 GB` (powers of 1000, as the Hub shows sizes).
 *
 * @example
 * formatBytes(1_500_000); // '1.50 MB'
 */
export function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined || !Number.isFinite(bytes)) return '-';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)} ${units[unit]}`;
}
