// The interpreter: DeepSeek chunk shapes -> deltas.

import fc from 'fast-check';
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

describe('the token fast path', () => {
  const shape = (delta: string, finish = 'null') =>
    `{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":${delta},"logprobs":null,"finish_reason":${finish}}]}`;

  it('gives exactly what a full parse gives, for any token text', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.boolean(), (text, reasoning) => {
        const delta = reasoning
          ? `{"content":null,"reasoning_content":${JSON.stringify(text)}}`
          : `{"content":${JSON.stringify(text)}}`;
        const calls = run(shape(delta));
        const expected = text.length === 0 ? [] : [[reasoning ? 'reasoning' : 'content', text]];
        expect(calls).toEqual(expected);
      }),
      { numRuns: 2000 },
    );
  });

  it('steps aside for anything else: finish chunks, extra delta fields, truncated data', () => {
    expect(run(shape('{"content":"a"}', '"stop"'))).toEqual([
      ['content', 'a'],
      ['finish', 'stop', undefined],
    ]);
    expect(run(shape('{"content":"a","tool_calls":[]}'))).toEqual([['content', 'a']]);
    const truncated = shape('{"content":"a"}').slice(0, -1);
    expect(run(truncated).map((c) => c[0])).toEqual(['invalid']);
    expect(run(shape('{"content":"bad \\q escape"}')).map((c) => c[0])).toEqual(['invalid']);
  });
});
