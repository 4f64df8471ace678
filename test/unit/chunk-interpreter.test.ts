// The interpreter: DeepSeek chunk shapes -> deltas.

import { interpret, type DeltaSink } from '../../src/stream/interpreter';

function run(...data: string[]) {
  const calls: Array<[string, ...unknown[]]> = [];
  const sink: DeltaSink = {
    chunk: (d) => calls.push(['chunk', d]),
    content: (t) => calls.push(['content', t]),
    reasoning: (t) => calls.push(['reasoning', t]),
    finish: (r, u) => calls.push(['finish', r, u]),
    usage: (u) => calls.push(['usage', u]),
    done: () => calls.push(['done']),
    invalid: (m) => calls.push(['invalid', m]),
    upstreamError: (m) => calls.push(['upstreamError', m]),
  };
  for (const d of data) interpret(d, sink);
  return calls.filter((c) => c[0] !== 'chunk');
}

describe('interpret', () => {
  it('the role chunk carries no token', () => {
    expect(run('{"choices":[{"delta":{"role":"assistant","content":""}}]}')).toEqual([]);
  });
  it('content and reasoning with content null', () => {
    expect(
      run(
        '{"choices":[{"delta":{"content":null,"reasoning_content":"hmm"}}]}',
        '{"choices":[{"delta":{"content":"Hi"}}]}',
      ),
    ).toEqual([
      ['reasoning', 'hmm'],
      ['content', 'Hi'],
    ]);
  });
  it('usage on the finish chunk, and in a choices:[] chunk', () => {
    expect(
      run(
        '{"choices":[{"delta":{"content":""},"finish_reason":"stop"}],"usage":{"total_tokens":5}}',
      ),
    ).toEqual([['finish', 'stop', { total_tokens: 5 }]]);
    expect(run('{"choices":[],"usage":{"total_tokens":7}}')).toEqual([
      ['usage', { total_tokens: 7 }],
    ]);
  });
  it('content and finish in one chunk come in order', () => {
    expect(run('{"choices":[{"delta":{"content":"end"},"finish_reason":"length"}]}')).toEqual([
      ['content', 'end'],
      ['finish', 'length', undefined],
    ]);
  });
  it('[DONE] ends the stream', () => {
    expect(run('[DONE]')).toEqual([['done']]);
  });
  it('malformed JSON and non-objects are protocol errors with a short description', () => {
    const calls = run('{"choices":[', '42', 'null');
    expect(calls.map((c) => c[0])).toEqual(['invalid', 'invalid', 'invalid']);
    expect(String(calls[0]![1])).toMatch(/malformed upstream event/);
  });
  it('an error object inside the stream is an upstream error', () => {
    expect(run('{"error":{"message":"overloaded"}}')).toEqual([['upstreamError', 'overloaded']]);
  });
  it('every valid chunk is passed on verbatim first', () => {
    const seen: string[] = [];
    const data = '{"id":"a","choices":[{"delta":{"content":"x"}}],"system_fingerprint":"fp"}';
    interpret(data, {
      chunk: (d) => seen.push(d),
      content: () => seen.push('content'),
      reasoning: () => undefined,
      finish: () => undefined,
      usage: () => undefined,
      done: () => undefined,
      invalid: () => undefined,
      upstreamError: () => undefined,
    });
    expect(seen).toEqual([data, 'content']);
  });
});
