import { memoryReplayGuard } from '../../src/middleware/auth';

describe('the in-memory replay guard', () => {
  afterEach(() => jest.useRealTimers());

  it('refuses a signature seen within twice the window, forgets it after, and keeps the rest', async () => {
    jest.useFakeTimers({ now: 1_000_000_000_000 });
    const guard = memoryReplayGuard();
    for (let i = 0; i < 20_000; i++) expect(await guard.firstSeen(`old-${i}`)).toBe(true);
    expect(await guard.firstSeen('old-7')).toBe(false);
    jest.setSystemTime(Date.now() + 300_000);
    expect(await guard.firstSeen('newer')).toBe(true);
    // 600 s after the first ones: they expire, the newer one (300 s old) is still refused.
    jest.setSystemTime(Date.now() + 300_001);
    expect(await guard.firstSeen('old-7')).toBe(true);
    expect(await guard.firstSeen('newer')).toBe(false);
    expect(await guard.firstSeen('old-19999')).toBe(true);
  });
});
