import {
  costModel,
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
