// Retry rules and backoff: a flat table and a pure function.

import { backoffDelay, isRetryable, retryAfterMs } from '../../src/upstream/retry';

const opts = { baseMs: 500, maxMs: 8000, retryAfterMaxMs: 30000 };

describe('isRetryable', () => {
  it.each([408, 429, 500, 502, 503, 504])('retries HTTP %i', (status) => {
    expect(isRetryable({ kind: 'http', status })).toBe(true);
  });
  it.each([400, 401, 402, 403, 404, 422])('never retries HTTP %i', (status) => {
    expect(isRetryable({ kind: 'http', status })).toBe(false);
  });
  it('retries connection failures, resets and timeouts but not protocol garbage', () => {
    expect(isRetryable({ kind: 'connect' })).toBe(true);
    expect(isRetryable({ kind: 'reset' })).toBe(true);
    expect(isRetryable({ kind: 'headers_timeout' })).toBe(true);
    expect(isRetryable({ kind: 'idle_timeout' })).toBe(true);
    expect(isRetryable({ kind: 'protocol' })).toBe(false);
  });
});

describe('backoffDelay', () => {
  it('uses full jitter under an exponential ceiling capped at the max', () => {
    expect(backoffDelay(0, opts, undefined, () => 0.999)).toBe(499);
    expect(backoffDelay(1, opts, undefined, () => 0.999)).toBe(999);
    expect(backoffDelay(3, opts, undefined, () => 0.5)).toBe(2000);
    expect(backoffDelay(10, opts, undefined, () => 0.999)).toBe(7992);
    expect(backoffDelay(2, opts, undefined, () => 0)).toBe(0);
  });

  it('honours retry-after-ms first, then Retry-After seconds or date, within the cap', () => {
    expect(backoffDelay(0, opts, { 'retry-after-ms': '250', 'retry-after': '9' })).toBe(250);
    expect(backoffDelay(0, opts, { 'retry-after': '2' })).toBe(2000);
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(
      backoffDelay(0, opts, { 'retry-after': 'Thu, 01 Jan 2026 00:00:05 GMT' }, Math.random, now),
    ).toBe(5000);
    expect(backoffDelay(0, opts, { 'retry-after': '3600' })).toBe(30000);
  });

  it('falls back to backoff when Retry-After is garbage', () => {
    expect(retryAfterMs({ 'retry-after': 'soon' })).toBeUndefined();
    expect(backoffDelay(0, opts, { 'retry-after': 'soon' }, () => 0.5)).toBe(250);
  });

  it('treats a date in the past as no wait', () => {
    expect(retryAfterMs({ 'retry-after': 'Thu, 01 Jan 2020 00:00:00 GMT' })).toBe(0);
  });
});
