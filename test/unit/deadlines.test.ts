// The shared deadline lists behind the engine's idle and total limits: each deadline expires once,
// `ms` after it was last (re)started, in order, with one timer for the whole list.

import { Deadline, Deadlines, deadlinesFor } from '../../src/stream/deadlines';

beforeEach(() => jest.useFakeTimers());
afterEach(() => jest.useRealTimers());

function setUp(ms: number, onExpire?: (name: string) => void) {
  const expired: string[] = [];
  const list = new Deadlines<string>(ms, (name) => {
    expired.push(name);
    onExpire?.(name);
  });
  const make = (name: string) => new Deadline(list, name);
  return { list, expired, make };
}

it('expires each deadline ms after its start, in order', () => {
  const { expired, make } = setUp(100);
  const a = make('a');
  const b = make('b');
  a.start();
  jest.advanceTimersByTime(40);
  b.start();
  jest.advanceTimersByTime(59);
  expect(expired).toEqual([]);
  jest.advanceTimersByTime(2); // a at 100
  expect(expired).toEqual(['a']);
  jest.advanceTimersByTime(38);
  expect(expired).toEqual(['a']);
  jest.advanceTimersByTime(2); // b at 140
  expect(expired).toEqual(['a', 'b']);
  expect(jest.getTimerCount()).toBe(0);
});

it('a restart moves the deadline to ms from now, behind the others', () => {
  const { expired, make } = setUp(100);
  const a = make('a');
  const b = make('b');
  a.start();
  jest.advanceTimersByTime(10);
  b.start();
  jest.advanceTimersByTime(80); // t=90
  a.start(); // now due at 190, after b (110)
  jest.advanceTimersByTime(21); // t=111
  expect(expired).toEqual(['b']);
  jest.advanceTimersByTime(78); // t=189
  expect(expired).toEqual(['b']);
  jest.advanceTimersByTime(2);
  expect(expired).toEqual(['b', 'a']);
});

it('a stopped deadline never expires, and an empty list holds no timer', () => {
  const { expired, make } = setUp(50);
  const a = make('a');
  const b = make('b');
  a.start();
  b.start();
  expect(jest.getTimerCount()).toBe(1); // one timer for the list, not one per deadline
  a.stop();
  a.stop(); // twice is harmless
  jest.advanceTimersByTime(60);
  expect(expired).toEqual(['b']);
  b.start();
  b.stop();
  expect(jest.getTimerCount()).toBe(0);
  jest.advanceTimersByTime(1000);
  expect(expired).toEqual(['b']);
});

it('a handler that restarts its own deadline does not delay the ones behind it', () => {
  const made: Record<string, Deadline<string>> = {};
  const { expired, make } = setUp(100, (name) => {
    if (name === 'a' && expired.length === 1) made.a!.start(); // due again at 200
  });
  made.a = make('a');
  made.b = make('b');
  made.a.start();
  jest.advanceTimersByTime(50);
  made.b.start(); // due at 150
  jest.advanceTimersByTime(51);
  expect(expired).toEqual(['a']);
  jest.advanceTimersByTime(50); // t=151
  expect(expired).toEqual(['a', 'b']);
  jest.advanceTimersByTime(50); // t=201
  expect(expired).toEqual(['a', 'b', 'a']);
});

it("a handler's throw still lets the other due deadlines expire, then comes out of the timer", () => {
  const { expired, make } = setUp(100, (name) => {
    if (name === 'a') throw new Error('bug in a');
  });
  const a = make('a');
  const b = make('b');
  const c = make('c');
  a.start();
  b.start();
  jest.advanceTimersByTime(50);
  c.start(); // due at 150: stays
  expect(() => jest.advanceTimersByTime(51)).toThrow('bug in a');
  expect(expired).toEqual(['a', 'b']);
  expect(jest.getTimerCount()).toBe(1); // set again for c
});

it('a wait longer than setTimeout allows is set in steps', () => {
  const { expired, make } = setUp(2 ** 31 + 1000);
  make('a').start();
  jest.advanceTimersByTime(2 ** 31 - 1);
  expect(expired).toEqual([]);
  expect(jest.getTimerCount()).toBe(1);
  jest.advanceTimersByTime(1002);
  expect(expired).toEqual(['a']);
});

it('deadlinesFor gives one list per length', () => {
  const lists = new Map<number, Deadlines<string>>();
  const noop = () => undefined;
  const a = deadlinesFor(lists, 100, noop);
  expect(deadlinesFor(lists, 100, noop)).toBe(a);
  expect(deadlinesFor(lists, 200, noop)).not.toBe(a);
  expect(lists.size).toBe(2);
});

it('a deadline started after the clock went back (fake timers installed again) still expires', () => {
  const { expired, make } = setUp(100);
  jest.advanceTimersByTime(5000);
  make('a').start(); // due at ~5100 on this clock
  jest.useFakeTimers(); // a new clock, back near 0: the list's timer went with the old one
  make('b').start(); // due at ~100, before a: first in the list, the timer set again
  jest.advanceTimersByTime(101);
  expect(expired).toEqual(['b']);
  jest.advanceTimersByTime(5000);
  expect(expired).toEqual(['b', 'a']);
});

it('a length of 0 counts as 1 ms: a handler restarting its deadline does not expire it again at once', () => {
  let restarts = 0;
  const made: Record<string, Deadline<string>> = {};
  const { expired, make } = setUp(0, () => {
    if (restarts++ < 5) made.a!.start();
  });
  made.a = make('a');
  made.a.start();
  jest.advanceTimersByTime(1);
  expect(expired).toEqual(['a']);
  jest.advanceTimersByTime(1);
  expect(expired).toEqual(['a', 'a']);
});
