import assert from 'node:assert/strict';
import { test } from 'node:test';
import { linePlot } from '../src/plot.js';

/** The plotting area of a plot without a title: each row's cells after the axis. */
const area = (lines: string[], height: number): string[] => lines.slice(0, height).map((line) => line.slice(line.search(/[┤│]/) + 1));

test('a plot has height rows of width cells, an x axis and its labels; min and max label the bottom and top rows', () => {
  const lines = linePlot([12.5, 6, 3, 2, 1.625], { width: 30, height: 8, xStart: 1, xLabel: 'step' });
  assert.equal(lines.length, 8 + 2);
  const cells = area(lines, 8);
  for (const row of cells) assert.equal(row.length, 30);
  assert.equal(new Set(lines.slice(0, 9).map((l) => l.length)).size, 1, 'rows and axis line up');
  assert.match(lines[0]!, /^ 12\.5 ┤/, 'labels are right-aligned');
  assert.match(lines[7]!, /^1\.625 ┤/);
  for (const row of lines.slice(1, 7)) assert.match(row, /^ +│/, 'only the min and max rows are labelled');
  assert.match(lines[8]!, /^ +└─{30}$/);
  assert.match(lines[9]!, /^ +1 +5 step$/);
  // The line starts on the top row (the first value is the maximum) and ends on the bottom row.
  assert.notEqual(cells[0]![0], ' ');
  assert.notEqual(cells[7]![29], ' ');
  assert.equal(cells[0]![29], ' ');
  // Every column holds the line: it is drawn without gaps.
  for (let column = 0; column < 30; column++) assert.ok(cells.some((row) => row[column] !== ' '), `column ${column} is drawn`);
});

test('a falling series goes down and a rising one up, row by row', () => {
  const rowOfColumn = (values: number[], column: number): number => {
    const cells = area(linePlot(values, { width: 10, height: 5 }), 5);
    // The row where the line leaves the column: a flat segment or an arriving corner.
    return cells.findIndex((row) => '─╰╭●'.includes(row[column]!));
  };
  assert.deepEqual([0, 4, 9].map((c) => rowOfColumn([4, 3, 2, 1, 0], c)), [0, 2, 4]);
  assert.deepEqual([0, 4, 9].map((c) => rowOfColumn([0, 1, 2, 3, 4], c)), [4, 2, 0]);
});

test('the labels show enough digits to tell min from max, and the title comes first', () => {
  const lines = linePlot([1.00001, 1.00002], { width: 4, height: 2, title: 'loss (nats/token)' });
  assert.equal(lines[0], 'loss (nats/token)');
  assert.match(lines[1]!, /^1\.00002 ┤/);
  assert.match(lines[2]!, /^1\.00001 ┤/);
});

test('a constant series is a flat line on the middle row, labelled once', () => {
  const lines = linePlot([0.25, 0.25, 0.25], { width: 6, height: 5 });
  const cells = area(lines, 5);
  assert.deepEqual(cells, ['      ', '      ', '──────', '      ', '      ']);
  assert.equal(lines.filter((l) => l.includes('┤')).length, 1);
  assert.match(lines[2]!, /^0\.25 ┤/);
});

test('a single point is one marker at the first column', () => {
  const lines = linePlot([7], { width: 5, height: 3, xStart: 4 });
  assert.deepEqual(area(lines, 3), ['     ', '●    ', '     ']);
  assert.match(lines[1]!, /^7 ┤/);
  assert.match(lines.at(-1)!, /^ +4 +4 step$/);
});

test('NaN and infinite values are skipped (the title counts them) and the line bridges them', () => {
  const lines = linePlot([Number.NaN, 3, Number.POSITIVE_INFINITY, 1], { width: 7, height: 3, title: 'reward' });
  assert.equal(lines[0], 'reward (2 non-finite values skipped)');
  assert.match(lines[1]!, /^3 ┤/);
  assert.match(lines[3]!, /^1 ┤/);
  const cells = area(lines.slice(1), 3);
  // Index 0 (NaN) maps to columns 0-1: nothing is drawn there; x keeps its place on the axis.
  assert.deepEqual(cells.map((row) => row.slice(0, 2)), ['  ', '  ', '  ']);
  for (let column = 2; column < 7; column++) assert.ok(cells.some((row) => row[column] !== ' '), `column ${column} is drawn`);
  assert.match(lines.at(-1)!, /0 +3 step$/);
  assert.deepEqual(linePlot([Number.NaN, Number.NaN], { title: 'reward' }), ['reward (2 non-finite values skipped)', '(no data)']);
  assert.deepEqual(linePlot([]), ['(no data)']);
});

test('width and height below 2 or fractional are refused by name', () => {
  assert.throws(() => linePlot([1, 2], { width: 1 }), /width must be an integer >= 2, got 1/);
  assert.throws(() => linePlot([1, 2], { height: 2.5 }), /height must be an integer >= 2, got 2.5/);
});
