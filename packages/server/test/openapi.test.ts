import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { generateOpenApi, OPENAPI_PATH } from '../src/openapi.js';

test('the committed openapi.json matches the route schemas (run `npm run openapi` to refresh)', async () => {
  const fresh = await generateOpenApi();
  assert.equal(readFileSync(OPENAPI_PATH, 'utf8'), fresh);
  const doc = JSON.parse(fresh) as { paths: Record<string, unknown> };
  for (const route of ['/api/v1/forward_backward', '/api/v1/retrieve_future', '/api/v1/asample', '/api/v1/training_runs']) {
    assert.ok(route in doc.paths, `${route} is documented`);
  }
});
