// Config review: values Node or Express cannot use are refused at start-up, naming the variable,
// instead of being accepted and misbehaving later.

import express from 'express';
import { ConfigError, loadConfig } from '../../src/config';

describe('timer settings', () => {
  // Node runs a timer of more than 2^31-1 ms after 1 ms: a 30-day STREAM_MAX_DURATION_MS would
  // end every stream at once, a long SHUTDOWN_GRACE_MS would skip the drain.
  const thirtyDays = String(30 * 24 * 3600 * 1000);
  for (const name of [
    'STREAM_MAX_DURATION_MS',
    'SHUTDOWN_GRACE_MS',
    'HEARTBEAT_MS',
    'UPSTREAM_IDLE_TIMEOUT_MS',
    'RESUME_GRACE_MS',
  ]) {
    it(`a ${name} longer than a Node timer can wait is refused, naming it`, () => {
      expect(() => loadConfig({ [name]: thirtyDays })).toThrow(ConfigError);
      expect(() => loadConfig({ [name]: thirtyDays })).toThrow(name);
    });
  }

  it('the longest delay a timer takes is still accepted', () => {
    expect(loadConfig({ STREAM_MAX_DURATION_MS: '2147483647' }).streamMaxDurationMs).toBe(
      2147483647,
    );
  });
});

describe('TRUST_PROXY', () => {
  it('a value Express cannot compile is refused at load, naming TRUST_PROXY', () => {
    for (const v of ['yes', '10.0.0.1, proxy.local', '1.2.3.4/33']) {
      expect(() => loadConfig({ TRUST_PROXY: v })).toThrow(ConfigError);
      expect(() => loadConfig({ TRUST_PROXY: v })).toThrow('TRUST_PROXY');
    }
  });

  it('TRUE and False mean what they say', () => {
    expect(loadConfig({ TRUST_PROXY: 'TRUE' }).trustProxy).toBe(true);
    expect(loadConfig({ TRUST_PROXY: 'False' }).trustProxy).toBe(false);
  });

  it('what it accepts, Express accepts too', () => {
    for (const v of [
      'loopback',
      'loopback, uniquelocal',
      '10.0.0.0/8,127.0.0.1',
      '::1/128',
      '10.0.0.1/255.0.0.0',
      '2',
    ]) {
      const c = loadConfig({ TRUST_PROXY: v });
      expect(() => express().set('trust proxy', c.trustProxy)).not.toThrow();
    }
  });
});

describe('DEEPSEEK_BASE_URL', () => {
  it('host:port without a scheme (a URL with the scheme "localhost:") is refused, naming it', () => {
    for (const v of ['localhost:8080', 'ftp://files.example.com']) {
      expect(() => loadConfig({ DEEPSEEK_BASE_URL: v })).toThrow(ConfigError);
      expect(() => loadConfig({ DEEPSEEK_BASE_URL: v })).toThrow('DEEPSEEK_BASE_URL');
    }
    expect(loadConfig({ DEEPSEEK_BASE_URL: 'HTTP://127.0.0.1:9/' }).deepseekBaseUrl).toBe(
      'HTTP://127.0.0.1:9',
    );
  });
});
