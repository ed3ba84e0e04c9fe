/**
 * @module Keeps server file-system paths out of error messages sent to clients: worker errors and
 * tracebacks quote checkpoint, model and data paths, which say more about the host than a client
 * needs. Known roots are replaced by placeholders such as `<data-dir>`.
 */
import { realpathSync } from 'node:fs';

/** A folder to hide and what to show instead. */
export interface RedactedRoot {
  path: string;
  label: string;
}

const escapeRegExp = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Builds a function that replaces every occurrence of the given folders (and their real paths,
 * should they be reached through symlinks) in a message; the longest, most specific, first.
 *
 * @example
 * const redact = pathRedactor([{ path: '/srv/lathe', label: '<data-dir>' }]);
 * redact("cannot read /srv/lathe/checkpoints/x/adapter.safetensors"); // "cannot read <data-dir>/checkpoints/x/adapter.safetensors"
 */
export function pathRedactor(roots: RedactedRoot[]): (message: string) => string {
  const all = new Map<string, string>();
  for (const { path, label } of roots) {
    // "/" or "" would swallow every path; they hide nothing worth hiding.
    const variants = [path, safeRealpath(path)].map((p) => p.replace(/\/+$/, '')).filter((p) => p.length > 1);
    for (const variant of variants) if (!all.has(variant)) all.set(variant, label);
  }
  const ordered = [...all].sort(([a], [b]) => b.length - a.length);
  if (ordered.length === 0) return (message) => message;
  // A root matches only as a whole path component: /srv/lathe, not /srv/lathe2.
  const pattern = new RegExp(`(${ordered.map(([p]) => escapeRegExp(p)).join('|')})(?![^/\\s'"\`),:;\\]}])`, 'g');
  const labels = new Map(ordered);
  return (message) => message.replace(pattern, (match) => labels.get(match) ?? match);
}

function safeRealpath(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}
