import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DownloadProgress, formatDuration, ProgressBar } from '../src/progress.js';

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

test('the progress bar names the run\'s headline metric', () => {
  const lines: string[] = [];
  const bar = new ProgressBar({ write: (s: string) => lines.push(s) }, 20, 0, 'reward');
  bar.update(2, 0.25);
  assert.match(lines[0]!, /^\[#{2}-{18}\]  2\/20 {2}reward 0\.2500 {2}ETA \d+:\d\d\n$/);
});

test('formatDuration', () => {
  assert.equal(formatDuration(0), '0:00');
  assert.equal(formatDuration(75.4), '1:15');
  assert.equal(formatDuration(3 * 3600 + 62), '3:01:02');
  assert.equal(formatDuration(Number.NaN), '?');
});

test('download progress: plain lines at each tenth of the bytes; on a terminal the last redraw shows the total', () => {
  const plain: string[] = [];
  const progress = new DownloadProgress({ write: (s: string) => plain.push(s) }, 'acme/model', 2_000_000, 500_000);
  for (let done = 500_000; done <= 2_000_000; done += 50_000) progress.update(done);
  progress.done();
  assert.equal(plain.length, 9, 'tenths 2 to 10');
  assert.match(plain[0]!, /^acme\/model \[#{5}-{15}\] 500 KB\/2\.00 MB {2}0 B\/s {2}ETA \?\n$/, 'no rate yet: the resumed bytes are not counted');
  assert.match(plain[3]!, /\[#{10}-{10}\] 1\.00 MB\/2\.00 MB/);
  assert.match(plain[8]!, /\[#{20}\] 2\.00 MB\/2\.00 MB .*ETA 0:00\n$/);

  const tty: string[] = [];
  const redrawn = new DownloadProgress({ isTTY: true, write: (s: string) => tty.push(s) }, 'acme/model', 2_000_000, 0);
  for (let done = 0; done <= 2_000_000; done += 1000) redrawn.update(done);
  redrawn.done();
  assert.match(tty[0]!, /^\r\x1b\[2Kacme\/model \[-{20}\] 0 B\/2\.00 MB/);
  assert.match(tty.at(-2)!, /^\r\x1b\[2Kacme\/model \[#{20}\] 2\.00 MB\/2\.00 MB/);
  assert.equal(tty.at(-1), '\n');
});
