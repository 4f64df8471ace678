import {
  costModel,
  connectionsText,
  emptyMeasurement,
  modelCpuPerToken,
  roundRatios,
  type Measurement,
} from '../../bench/stats';

function measured(rounds: Array<[cpuUs: number, tokens: number, ttftP50: number]>): Measurement {
  const m = emptyMeasurement('throughput', 'v', 'v', 't');
  m.perRound = rounds.map(([cpuUs, tokens, ttftP50]) => ({ cpuUs, tokens, ttftP50 }));
  return m;
}

describe('bench per-round ratios', () => {
  const base = measured([
    [4000, 1000, 2],
    [5000, 1000, 4],
  ]);

  it('pairs round i of the target with round i of the baseline (CPU per token)', () => {
    const proxy = measured([
      [6000, 1000, 3],
      [6000, 1500, 4],
    ]);
    // Round 1: 6 / 4 µs/token; round 2: 4 / 5 (the pooled ratio, 12000/2500 / 9000/2000, is 1.07).
    expect(roundRatios(proxy, base, 'cpu')).toEqual([1.5, 0.8]);
  });

  it('uses the TTFT p50 of each round', () => {
    const proxy = measured([
      [1, 1, 3],
      [1, 1, 2],
    ]);
    expect(roundRatios(proxy, base, 'ttft')).toEqual([1.5, 0.5]);
  });

  it("uses each round's TTFT p99 (its share of the first tokens) and live memory", () => {
    const slow = (ttfts: number[][], mem: number[]): Measurement => {
      const m = emptyMeasurement('slow', 'v', 'v', 't');
      m.perRound = ttfts.map((t) => ({ cpuUs: 1, tokens: 1, ttftP50: 1, ttftCount: t.length }));
      m.ttftMs = ttfts.flat();
      m.probe = mem.map((kib) => ({
        open: 100,
        idleRss: 1000,
        rss: 1000 + kib * 100,
        idleHeap: 7000,
        heap: 7000 + kib * 50,
      }));
      return m;
    };
    const ramp = (n: number, top: number) =>
      Array.from({ length: n }, (_, i) => (top * (i + 1)) / n);
    // Round 1 of the target has a tail (its p99 is 1000 against 100); round 2 has none.
    const proxy = slow([[...ramp(98, 100), 1000, 1000], ramp(50, 100)], [12, 30]);
    const base = slow([ramp(100, 100), ramp(50, 100)], [10, 10]);
    const [first, second] = roundRatios(proxy, base, 'ttft99');
    expect(first).toBeGreaterThan(5); // the tail, in its own round
    expect(second).toBe(1);
    expect(roundRatios(proxy, base, 'mem')).toEqual([1.2, 3]);
    expect(roundRatios(proxy, base, 'heap')).toEqual([1.2, 3]);
    proxy.probe[1]!.heap = 8000;
    expect(roundRatios(proxy, base, 'heap')).toEqual([1.2, 2]);
    // Without per-round counts (older runs): an equal split, only if every stream had a first
    // token; otherwise nothing.
    for (const r of proxy.perRound!) delete r.ttftCount;
    proxy.streams = 152; // two streams without a first token: the rounds cannot be told apart
    expect(roundRatios(proxy, base, 'ttft99')).toEqual([]);
    const even = slow([ramp(50, 100), ramp(50, 200)], [1, 1]);
    for (const r of even.perRound!) delete r.ttftCount;
    even.streams = 100;
    const [evenFirst, evenSecond] = roundRatios(even, base, 'ttft99');
    expect(evenFirst).toBeCloseTo(1, 1);
    expect(evenSecond).toBe(2);
  });

  it('gives nothing for one round, unequal rounds, or a run recorded without them', () => {
    expect(roundRatios(measured([[1, 1, 1]]), measured([[1, 1, 1]]), 'cpu')).toEqual([]);
    expect(roundRatios(measured([[1, 1, 1]]), base, 'cpu')).toEqual([]);
    expect(roundRatios(emptyMeasurement('a', 'b', 'c', 'd'), base, 'cpu')).toEqual([]);
  });
});

describe('bench cost model', () => {
  const run = (streams: number, tokensEach: number, cpuUsEach: number): Measurement => ({
    ...emptyMeasurement('cost', 'x', 'x', 't'),
    streams,
    tokens: streams * tokensEach,
    cpuUs: streams * cpuUsEach,
  });

  it('splits CPU per stream into a fixed part and a part per token', () => {
    // 400 µs + 2.5 µs/token: 450 µs for 20 tokens, 2900 µs for 1000.
    const m = costModel(run(5000, 20, 450), run(200, 1000, 2900));
    expect(m.fixedUs).toBeCloseTo(400, 6);
    expect(m.perTokenUs).toBeCloseTo(2.5, 6);
    expect(modelCpuPerToken(m, 200)).toBeCloseTo(400 / 200 + 2.5, 6);
  });

  it('gives NaN when the runs do not differ in length', () => {
    const m = costModel(run(100, 20, 450), run(100, 20, 500));
    expect(m.fixedUs).toBeNaN();
    expect(m.perTokenUs).toBeNaN();
  });
});

describe('bench connections per round', () => {
  it('gives each round its new connections and their spans, and says nothing without them', () => {
    const m = emptyMeasurement('slow', 'v', 'v', 't');
    const conn = (client: number, server: number, sim: number) => ({
      client: { count: 1000, spanMs: client },
      server: { count: 1000, spanMs: server },
      sim: { count: 936, spanMs: sim },
    });
    m.perRound = [
      { cpuUs: 1, tokens: 1, ttftP50: 1, connections: conn(150.2, 1210.7, 880) },
      { cpuUs: 1, tokens: 1, ttftP50: 1, connections: conn(98, 402, 12.4) },
    ];
    expect(connectionsText(m)).toBe(
      'new connections, connected/accepted within: 1000 in 150/1211 ms, upstream 936 in 880 ms; ' +
        '1000 in 98/402 ms, upstream 936 in 12 ms',
    );
    m.perRound = [{ cpuUs: 1, tokens: 1, ttftP50: 1 }];
    expect(connectionsText(m)).toBe('');
  });
});
