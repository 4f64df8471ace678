// Config: every setting validated at start-up; a bad value names its variable.

import { ConfigError, loadConfig } from '../../src/config';

describe('loadConfig', () => {
  it('gives the SPEC defaults for an empty environment, serving from the simulator', () => {
    const c = loadConfig({});
    expect(c.port).toBe(3000);
    expect(c.host).toBe('0.0.0.0');
    expect(c.deepseekBaseUrl).toBe('https://api.deepseek.com');
    expect(c.defaultModel).toBe('deepseek-v4-flash');
    expect(c.allowedModels).toEqual([
      'deepseek-v4-flash',
      'deepseek-v4-pro',
      'deepseek-chat',
      'deepseek-reasoner',
    ]);
    expect(c.retryMax).toBe(3);
    expect(c.retryBaseDelayMs).toBe(500);
    expect(c.retryMaxDelayMs).toBe(8000);
    expect(c.streamMaxDurationMs).toBe(300000);
    expect(c.upstreamResumeMax).toBe(2);
    expect(c.heartbeatMs).toBe(15000);
    expect(c.maxBodyBytes).toBe(1048576);
    expect(c.maxPromptChars).toBe(100000);
    expect(c.rateLimitMax).toBe(10);
    expect(c.maxConcurrentStreams).toBe(1000);
    expect(c.shutdownGraceMs).toBe(25000);
    expect(c.useSimulator).toBe(true);
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('reads values and lists', () => {
    const c = loadConfig({
      PORT: '8080',
      DEEPSEEK_API_KEY: 'sk-x',
      ALLOWED_MODELS: 'deepseek-v4-pro, deepseek-v4-flash',
      DEEPSEEK_BASE_URL: 'http://127.0.0.1:9999/',
      TRUST_PROXY: '1',
    });
    expect(c.port).toBe(8080);
    expect(c.useSimulator).toBe(false);
    expect(c.allowedModels).toEqual(['deepseek-v4-pro', 'deepseek-v4-flash']);
    expect(c.deepseekBaseUrl).toBe('http://127.0.0.1:9999');
    expect(c.trustProxy).toBe(1);
  });

  const bad: Array<[string, Record<string, string>]> = [
    ['PORT', { PORT: 'eighty' }],
    ['PORT', { PORT: '70000' }],
    ['RETRY_MAX', { RETRY_MAX: '-1' }],
    ['HEARTBEAT_MS', { HEARTBEAT_MS: '1.5' }],
    ['LOG_LEVEL', { LOG_LEVEL: 'loud' }],
    ['DEEPSEEK_BASE_URL', { DEEPSEEK_BASE_URL: 'not a url' }],
    ['DEEPSEEK_MODEL', { DEEPSEEK_MODEL: 'gpt-4' }],
    ['DEEPSEEK_API_KEY', { NODE_ENV: 'production' }],
    ['TLS_CERT_FILE', { TLS_CERT_FILE: '/x.pem' }],
  ];
  for (const [name, env] of bad) {
    it(`rejects ${JSON.stringify(env)} with a message naming ${name}`, () => {
      expect(() => loadConfig(env)).toThrow(ConfigError);
      expect(() => loadConfig(env)).toThrow(name);
    });
  }
});
