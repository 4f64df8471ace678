// ResponseSink's heartbeat: pings while the client is there, and nothing left running after it
// went away (each interval would otherwise hold its response and sink for the process's life).

import type { ServerResponse } from 'node:http';
import { sseFrames } from '../../src/format/frames';
import { ResponseSink } from '../../src/format/response-sink';
import { fakeResponse } from '../helpers/fake-response';

describe('ResponseSink heartbeat', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('pings a quiet stream, and stops once the client is gone', () => {
    const { res, writes } = fakeResponse();
    const sink = new ResponseSink(res as unknown as ServerResponse, sseFrames('r1', 100), {
      requestId: 'r1',
      heartbeatMs: 1000,
    });
    sink.open();
    expect(jest.getTimerCount()).toBe(1);
    jest.advanceTimersByTime(1000);
    expect(writes.filter((w) => w === ': ping\n\n')).toHaveLength(1);

    res.destroyed = true; // the client hung up; nobody told the sink
    jest.advanceTimersByTime(5000);
    expect(writes.filter((w) => w === ': ping\n\n')).toHaveLength(1);
    expect(jest.getTimerCount()).toBe(0);
  });

  it('a ping comes within HEARTBEAT_MS of the last write, then once per HEARTBEAT_MS', () => {
    const { res, writes } = fakeResponse();
    const sink = new ResponseSink(res as unknown as ServerResponse, sseFrames('r3', 100), {
      requestId: 'r3',
      heartbeatMs: 1000,
    });
    sink.open();
    jest.advanceTimersByTime(400);
    sink.content('hi', 1);
    sink.flush(); // the last write, at 400 ms
    const pingsAt: number[] = [];
    for (let t = 401; t <= 6400; t++) {
      const before = writes.length;
      jest.advanceTimersByTime(1);
      if (writes.length > before && writes.at(-1) === ': ping\n\n') pingsAt.push(t);
    }
    // Never more than HEARTBEAT_MS of silence (a reverse proxy's idle timeout just above it
    // must not cut the stream), and no more pings than one per HEARTBEAT_MS.
    expect(pingsAt[0]! - 400).toBeLessThanOrEqual(1000);
    for (let i = 1; i < pingsAt.length; i++) {
      expect(pingsAt[i]! - pingsAt[i - 1]!).toBe(1000);
    }
    expect(pingsAt.length).toBeGreaterThanOrEqual(5);
    sink.done('{}', 2);
  });

  it('streams share one timer; one that joins late still hears from it within HEARTBEAT_MS', () => {
    const a = fakeResponse();
    const b = fakeResponse();
    const sinkA = new ResponseSink(a.res as unknown as ServerResponse, sseFrames('ra', 100), {
      requestId: 'ra',
      heartbeatMs: 1000,
    });
    sinkA.open();
    jest.advanceTimersByTime(499); // B joins 1 ms before the shared timer's tick
    const sinkB = new ResponseSink(b.res as unknown as ServerResponse, sseFrames('rb', 100), {
      requestId: 'rb',
      heartbeatMs: 1000,
    });
    sinkB.open();
    expect(jest.getTimerCount()).toBe(1);
    const pings = (w: unknown[]) => w.filter((x) => x === ': ping\n\n').length;
    const bPingAt: number[] = [];
    for (let t = 500; t <= 3499; t++) {
      const before = pings(b.writes);
      jest.advanceTimersByTime(1);
      if (pings(b.writes) > before) bPingAt.push(t - 499);
    }
    // Its first tick came 1 ms after it joined: not a ping (a whole period first), and no more
    // than HEARTBEAT_MS of silence before the first one.
    expect(bPingAt[0]).toBeGreaterThan(500);
    expect(bPingAt[0]).toBeLessThanOrEqual(1000);
    expect(pings(a.writes)).toBeGreaterThanOrEqual(3);
    // Both gone: the timer goes too.
    a.res.destroyed = true;
    expect(jest.getTimerCount()).toBe(1);
    b.res.destroyed = true;
    jest.advanceTimersByTime(500);
    expect(jest.getTimerCount()).toBe(0);
    sinkA.done('{}', 1);
    sinkB.done('{}', 1);
  });

  it("one stream's heartbeat that throws does not stop the others'", () => {
    const a = fakeResponse();
    const b = fakeResponse();
    const open = (res: ReturnType<typeof fakeResponse>['res'], id: string) => {
      const sink = new ResponseSink(res as unknown as ServerResponse, sseFrames(id, 100), {
        requestId: id,
        heartbeatMs: 1000,
      });
      sink.open();
      return sink;
    };
    open(a.res, 'ta'); // first on the shared timer: it ticks first
    open(b.res, 'tb');
    a.res.write = () => {
      throw new Error('a broken response');
    };
    jest.advanceTimersByTime(500); // the first tick only starts the count
    expect(() => jest.advanceTimersByTime(500)).toThrow('a broken response');
    expect(b.writes.filter((w) => w === ': ping\n\n')).toHaveLength(1);
    a.res.destroyed = true;
    b.res.destroyed = true;
    jest.advanceTimersByTime(500);
    expect(jest.getTimerCount()).toBe(0);
  });

  it('HEAD: the head and no timer', () => {
    const { res, writes } = fakeResponse();
    new ResponseSink(res as unknown as ServerResponse, sseFrames('r2', 100), {
      requestId: 'r2',
      heartbeatMs: 1000,
    }).head();
    expect(res.headersSent).toBe(true);
    expect(res.writableEnded).toBe(true);
    expect(jest.getTimerCount()).toBe(0);
    expect(writes).toEqual(['retry: 100\nid: r2:0\n\n']); // Node drops a HEAD response's body
  });
});
