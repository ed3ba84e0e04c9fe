import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatDuration, ProgressBar } from '../src/progress.js';

test('the progress bar redraws one line on a terminal and prints plain lines elsewhere', () => {
  const tty: string[] = [];
  const bar = new ProgressBar({ isTTY: true, write: (s: string) => tty.push(s) }, 4, 0);
  bar.update(1, 2.5);
  bar.update(4, 0.125);
  bar.done();
  assert.equal(tty.length, 3);
  assert.match(tty[0]!, /^\r\x1b\[2K\[#{5}-{15}\] 1\/4 {2}loss 2\.5000 {2}ETA \d+:\d\d$/);
  assert.match(tty[1]!, /^\r\x1b\[2K\[#{20}\] 4\/4 {2}loss 0\.1250 {2}ETA 0:00$/);
  assert.equal(tty[2], '\n');

  const plain: string[] = [];
  const resumed = new ProgressBar({ write: (s: string) => plain.push(s) }, 100, 40);
  resumed.update(40, 1);
  resumed.update(41, 1);
  resumed.done();
  assert.match(plain[0]!, / 40\/100 {2}loss 1\.0000 {2}ETA \?\n$/, 'no rate yet: the resumed steps are not counted');
  assert.match(plain[1]!, / 41\/100 {2}loss 1\.0000 {2}ETA \d+:\d\d\n$/);
  assert.equal(plain.length, 2, 'done() adds nothing after plain lines');
});

test('the progress bar shows the metric it was made for', () => {
  const lines: string[] = [];
  const bar = new ProgressBar({ write: (s: string) => lines.push(s) }, 10, 0, 'reward');
  bar.update(3, 0.3125);
  assert.match(lines[0]!, / 3\/10 {2}reward 0\.3125 {2}ETA /);
});

test('formatDuration', () => {
  assert.equal(formatDuration(0), '0:00');
  assert.equal(formatDuration(75.4), '1:15');
  assert.equal(formatDuration(3 * 3600 + 62), '3:01:02');
  assert.equal(formatDuration(Number.NaN), '?');
});
