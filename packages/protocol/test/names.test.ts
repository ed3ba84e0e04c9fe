// tinker:// paths, loss-function names and error codes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { errorCodeInfo, formatTinkerPath, isLossFn, LOSS_FUNCTIONS, parseTinkerPath, SERVER_ERROR_CODES, TinkerPathError, WORKER_ERROR_CODES } from '../src/index.js';

test('tinker paths parse as the Python SDK does and format back', () => {
  const path = formatTinkerPath('S:train:0', 'sampler_weights', 'final');
  assert.equal(path, 'tinker://S:train:0/sampler_weights/final');
  assert.deepEqual(parseTinkerPath(path), { modelId: 'S:train:0', kind: 'sampler_weights', name: 'final', checkpointId: 'sampler_weights/final' });
  assert.equal(parseTinkerPath('tinker://r/external_weights/hf').kind, 'external_weights');
  const cases: [string, RegExp][] = [
    ['s3://x', /invalid tinker path "s3:\/\/x": not a tinker:\/\/ path/],
    ['tinker://r/other/x', /invalid tinker path "tinker:\/\/r\/other\/x": expected tinker:\/\/<model_id>\/weights\/<name>/],
    ['tinker://r/weights/x/y', /invalid tinker path/],
    ['tinker:///weights/x', /invalid tinker path/],
    ['tinker://r/weights/', /invalid tinker path/],
  ];
  for (const [value, message] of cases) assert.throws(() => parseTinkerPath(value), (e: unknown) => e instanceof TinkerPathError && message.test(e.message), value);
});

test('loss functions', () => {
  assert.deepEqual([...LOSS_FUNCTIONS], ['cross_entropy', 'importance_sampling', 'ppo', 'cispo', 'dro']);
  assert.equal(isLossFn('cispo'), true);
  assert.equal(isLossFn('mse'), false);
});

test('error codes: status and kind agree, known codes are looked up, unknown ones are server errors', () => {
  for (const [code, info] of Object.entries({ ...SERVER_ERROR_CODES, ...WORKER_ERROR_CODES })) {
    assert.equal(info.kind, info.status >= 500 ? 'server' : 'user', code);
  }
  assert.deepEqual(errorCodeInfo('token_out_of_vocab'), { status: 400, kind: 'user' });
  assert.deepEqual(errorCodeInfo('too_many_requests'), { status: 429, kind: 'user' });
  assert.deepEqual(errorCodeInfo('unavailable'), { status: 503, kind: 'server' });
  assert.deepEqual(errorCodeInfo('internal'), { status: 500, kind: 'server' });
  assert.deepEqual(errorCodeInfo('no_such_code'), { status: 500, kind: 'server' });
  assert.deepEqual(errorCodeInfo('toString'), { status: 500, kind: 'server' });
});
