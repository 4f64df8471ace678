// Stream metrics are applied in batches; a scrape must still see every finished stream.

import { Metrics } from '../../src/metrics';
import type { StreamStats } from '../../src/stream/chat-stream';

const stats = (tokens: number): StreamStats => ({
  startedAt: 0,
  ttftMs: 12,
  tokens,
  bytesIn: 0,
  retries: 0,
  resumes: 0,
  upstreamRequests: 1,
  outcome: 'completed',
  errorCode: undefined,
  finishReason: 'stop',
});

const tokensApplied = async (m: Metrics): Promise<number> =>
  (await m.tokens.get()).values.reduce((n, v) => n + v.value, 0);

describe('Metrics.streamFinished', () => {
  it('a scrape applies the reports still waiting', async () => {
    const m = new Metrics(false);
    m.streamFinished('/chat-stream', stats(5), 100);
    m.streamFinished('/v1/chat/completions', stats(7), 100);
    expect(await tokensApplied(m)).toBe(0); // waiting for a batch or a scrape
    const text = await m.registry.metrics();
    expect(text).toMatch(/^dsp_tokens_total\{route="\/chat-stream"\} 5$/m);
    expect(text).toMatch(/^dsp_tokens_total\{route="\/v1\/chat\/completions"\} 7$/m);
    expect(text).toMatch(/^dsp_time_to_first_token_seconds_count\{route="\/chat-stream"\} 1$/m);
    expect(text).toMatch(
      /^dsp_stream_duration_seconds_count\{route="\/chat-stream",outcome="completed"\} 1$/m,
    );
  });

  it('a full batch is applied without a scrape, each report once', async () => {
    const m = new Metrics(false);
    for (let i = 0; i < 127; i++) m.streamFinished('/chat-stream', stats(1), 10);
    expect(await tokensApplied(m)).toBe(0);
    m.streamFinished('/chat-stream', stats(1), 10);
    expect(await tokensApplied(m)).toBe(128);
    await m.registry.metrics();
    expect(await tokensApplied(m)).toBe(128);
  });
});
