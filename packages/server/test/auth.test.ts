/**
 * API-key revocation across servers: two server instances share one database (a SQLite file, and
 * PostgreSQL when `LATHE_TEST_DATABASE_URL` is set); a key revoked in the database stops working on
 * both within the auth cache's lifetime (one second, on an injected clock).
 *
 *   scripts/with-postgres.sh node --conditions=lathe-source --import tsx --test packages/server/test/auth.test.ts
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { createServer, type LatheServer } from '../src/index.js';
import { AUTH_CACHE_MS } from '../src/http/auth.js';
import { openStore } from '../src/store/index.js';
import { databaseLanes } from './fixtures/postgres.js';

const lanes = databaseLanes('lathe_auth');

for (const lane of lanes) {
  describe(`auth (${lane.name})`, { skip: lane.skip }, () => {
    test('a key revoked in the database is refused by every server sharing it within one second', async () => {
      const database = await lane.database();
      let now = 1_000_000;
      const clock = () => now;
      const servers: LatheServer[] = [];
      try {
        for (let i = 0; i < 2; i++) {
          const dataDir = mkdtempSync(path.join(os.tmpdir(), `lathe-auth-${i}-`));
          servers.push(await createServer({ dataDir, databaseUrl: database.url, models: [], clock }));
        }
        // The key is made and revoked through a store of its own, as `lathe keys` does.
        const admin = await openStore(database.url);
        const created = await admin.keys.create('doomed');
        const other = await admin.keys.create('kept');
        const get = (server: LatheServer, key: string) => server.app.inject({ method: 'GET', url: '/api/v1/sessions', headers: { 'x-api-key': key } });
        for (const server of servers) assert.equal((await get(server, created.key)).statusCode, 200);
        assert.deepEqual((await admin.keys.match('doomed')).map((k) => k.id), [created.id]);
        assert.ok(await admin.keys.revoke(created.id));
        await admin.close();
        // Within the cache's lifetime a server may still accept it; from then on, none does.
        now += AUTH_CACHE_MS;
        assert.ok(AUTH_CACHE_MS <= 1000);
        for (const server of servers) {
          const refused = await get(server, created.key);
          assert.equal(refused.statusCode, 401, refused.body);
          assert.equal((await get(server, other.key)).statusCode, 200);
        }
      } finally {
        for (const server of servers) await server.close();
        await database.drop();
      }
    });
  });
}
