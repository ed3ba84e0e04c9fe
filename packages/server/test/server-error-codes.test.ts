// The server's error replies against @lathe/protocol's SERVER_ERROR_CODES, read from the server's
// source: every `type` a raise site names is in the table with the status it is raised with, and
// the table names no type the server never sends.
import { SERVER_ERROR_CODES } from '@lathe/protocol';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';
import { REPO_ROOT } from '../src/worker/process.js';

const SERVER_SRC = path.join(REPO_ROOT, 'packages', 'server', 'src');

/** A raise site: the error `type` and the HTTP status it is raised with (undefined: computed). */
interface Raised {
  type: string;
  status: number | undefined;
  where: string;
}

/** The string or number literals an expression can take: a literal, or `c ? a : b` of literals. */
function literals(node: ts.Expression): (string | number)[] | undefined {
  if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return [node.text];
  if (ts.isNumericLiteral(node)) return [Number(node.text)];
  if (ts.isParenthesizedExpression(node)) return literals(node.expression);
  if (ts.isConditionalExpression(node)) {
    const [whenTrue, whenFalse] = [literals(node.whenTrue), literals(node.whenFalse)];
    return whenTrue && whenFalse ? [...whenTrue, ...whenFalse] : undefined;
  }
  return undefined;
}

/**
 * Every `badRequest(message, 'type')` (a 400) and `new HttpError(status, 'type', …)` in `text`. A
 * type passed on in a variable is skipped: the call that chose it names it as a literal.
 */
function raiseSites(file: string, text: string): Raised[] {
  const found: Raised[] = [];
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const visit = (node: ts.Node): void => {
    const where = `${file}:${source.getLineAndCharacterOfPosition(node.getStart()).line + 1}`;
    if (ts.isCallExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'badRequest' && node.arguments[1]) {
      for (const type of literals(node.arguments[1]) ?? []) found.push({ type: String(type), status: 400, where });
    }
    if (ts.isNewExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'HttpError' && node.arguments?.[1]) {
      const types = literals(node.arguments[1]) ?? [];
      const statuses = literals(node.arguments[0]!);
      // `new HttpError(c ? 413 : 400, c ? 'payload_too_large' : 'invalid_body', …)` pairs them up.
      types.forEach((type, i) => found.push({ type: String(type), status: statuses?.length === types.length ? Number(statuses[i]) : undefined, where }));
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

function serverSources(): { file: string; text: string }[] {
  return readdirSync(SERVER_SRC, { recursive: true, encoding: 'utf8' })
    .filter((entry) => entry.endsWith('.ts'))
    .map((entry) => ({ file: entry.split(path.sep).join('/'), text: readFileSync(path.join(SERVER_SRC, entry), 'utf8') }));
}

test('every error type the server raises is in SERVER_ERROR_CODES with its status', () => {
  const raised = serverSources().flatMap(({ file, text }) => raiseSites(file, text));
  assert.ok(raised.length > 50, `only ${raised.length} raise sites found`);
  const table: Record<string, { status: number }> = SERVER_ERROR_CODES;
  for (const { type, status, where } of raised) {
    assert.ok(Object.hasOwn(table, type), `${where} raises ${type}, which SERVER_ERROR_CODES lacks`);
    if (status !== undefined) assert.equal(status, table[type]!.status, `${where} raises ${type} with status ${status}`);
  }
});

test('SERVER_ERROR_CODES names no type the server never raises', () => {
  const named = new Set(serverSources().flatMap(({ file, text }) => raiseSites(file, text)).map((site) => site.type));
  const unused = Object.keys(SERVER_ERROR_CODES).filter((type) => !named.has(type));
  assert.deepEqual(unused, []);
});

test('the scan reads literal, conditional and computed raise sites', () => {
  const text = [
    "throw badRequest('no', 'invalid_seq_id');",
    "throw new HttpError(big ? 413 : 400, big ? 'payload_too_large' : 'invalid_body', m);",
    "throw new HttpError(status, 'bad_request', m);",
    'throw badRequest(`x ${y}`, type);',
  ].join('\n');
  assert.deepEqual(raiseSites('x.ts', text), [
    { type: 'invalid_seq_id', status: 400, where: 'x.ts:1' },
    { type: 'payload_too_large', status: 413, where: 'x.ts:2' },
    { type: 'invalid_body', status: 400, where: 'x.ts:2' },
    { type: 'bad_request', status: undefined, where: 'x.ts:3' },
  ]);
});
