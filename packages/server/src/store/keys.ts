/**
 * @module store/keys
 * API keys. A key is `tml-` + 32 random base64url characters; only its SHA-256 (hex) is stored,
 * so a leaked database does not leak usable keys and authentication is a hash lookup.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { affected } from './db.js';
import type { Database } from './schema.js';

/** A freshly created key; `key` is shown once and never stored. */
export interface CreatedKey {
  id: string;
  key: string;
  name: string;
  prefix: string;
  createdAt: number;
}

/** A key as listed (no secret). */
export interface KeyInfo {
  id: string;
  name: string;
  /** The key's first characters (`tml-` + 8), enough to tell keys apart; null for keys made before Lathe recorded it. */
  prefix: string | null;
  createdAt: number;
  revokedAt: number | null;
}

/** API key storage. */
export interface KeyRepo {
  /** Creates a key named `name`. */
  create(name: string): Promise<CreatedKey>;
  /** The key's id and name, or undefined when unknown or revoked. */
  authenticate(key: string): Promise<{ id: string; name: string } | undefined>;
  /** All keys, oldest first, revoked ones included. */
  list(): Promise<KeyInfo[]>;
  /** Revokes a key; false when unknown or already revoked. */
  revoke(id: string): Promise<boolean>;
  /**
   * The keys not yet revoked that `ref` names: by name, id, or prefix (the whole key works too,
   * since it starts with its prefix). More than one means `ref` is ambiguous.
   */
  match(ref: string): Promise<KeyInfo[]>;
}

/** How many characters of a key are kept in clear (`tml-` + 8 of its 32 random ones). */
export const KEY_PREFIX_LENGTH = 12;
const KEY_TAG = 'tml-';

/** SHA-256 hex of a key: what `api_keys.key_hash` holds. */
export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

export function createKeyRepo(db: Kysely<Database>): KeyRepo {
  const repo: KeyRepo = {
    async create(name) {
      const key = 'tml-' + randomBytes(24).toString('base64url'); // 24 bytes → 32 chars
      const prefix = key.slice(0, KEY_PREFIX_LENGTH);
      // Stored without `tml-`: no column holds anything that looks like a key.
      const row = { id: 'key_' + randomBytes(9).toString('base64url'), name, key_hash: hashKey(key), prefix: prefix.slice(KEY_TAG.length), created_at: Date.now(), revoked_at: null };
      await db.insertInto('api_keys').values(row).execute();
      return { id: row.id, key, name, prefix, createdAt: row.created_at };
    },

    async authenticate(key) {
      const row = await db
        .selectFrom('api_keys')
        .select(['id', 'name'])
        .where('key_hash', '=', hashKey(key))
        .where('revoked_at', 'is', null)
        .executeTakeFirst();
      return row === undefined ? undefined : { id: row.id, name: row.name };
    },

    async list() {
      const rows = await db.selectFrom('api_keys').select(['id', 'name', 'prefix', 'created_at', 'revoked_at']).orderBy('created_at').orderBy('id').execute();
      return rows.map((r) => ({ id: r.id, name: r.name, prefix: r.prefix === null ? null : KEY_TAG + r.prefix, createdAt: Number(r.created_at), revokedAt: r.revoked_at === null ? null : Number(r.revoked_at) }));
    },

    async match(ref) {
      const active = (await repo.list()).filter((k) => k.revokedAt === null);
      return active.filter((k) => k.name === ref || k.id === ref || (k.prefix !== null && ref.length >= KEY_PREFIX_LENGTH && ref.startsWith(k.prefix)));
    },

    async revoke(id) {
      const res = await db.updateTable('api_keys').set({ revoked_at: Date.now() }).where('id', '=', id).where('revoked_at', 'is', null).executeTakeFirst();
      return affected(res.numUpdatedRows) > 0;
    },
  };
  return repo;
}
