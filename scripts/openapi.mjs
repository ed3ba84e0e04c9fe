#!/usr/bin/env node
// Regenerates packages/server/openapi.json from the route schemas.
import { writeFileSync } from 'node:fs';
import { generateOpenApi, OPENAPI_PATH } from '@lathe/server/openapi';

writeFileSync(OPENAPI_PATH, await generateOpenApi());
console.log(`wrote ${OPENAPI_PATH}`);
