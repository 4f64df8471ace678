import { emptyMeasurement, roundRatios, type Measurement } from '../../bench/stats';

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
