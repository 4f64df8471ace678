// bench/scenarios.ts: what is measured (scenarios) and through what (targets). Adding a route to
// the benchmark is one entry in TARGETS; adding a load shape is one entry in SCENARIOS.

import { simulateAnswer } from '../src/simulator/answer';
import { buildUpstreamBody } from '../src/upstream/request';
import type { Job, RequestSpec, Wire } from './loadgen';

const MODEL = 'deepseek-v4-flash';

export interface Target {
  /** Short key for --target and tables. */
  key: string;
  label: string;
  /**
   * Which child serves it: `proxy-redis` is a second proxy child with its resume journal in a
   * redis-server the bench starts (skipped, with a note, when redis-server is not installed).
   */
  server: 'proxy' | 'proxy-redis' | 'baseline';
  wire: Wire;
  request(prompt: string): RequestSpec;
  /** Ask once before measuring; skip the target with a note when the route answers 404. */
  probe?: boolean;
  /** An experiment: run only when named with --target. */
  optional?: boolean;
}

const GET = (path: string, accept: string): RequestSpec => ({
  method: 'GET',
  path,
  headers: { Accept: accept },
});

const sseRequest = (prompt: string): RequestSpec =>
  GET(
    `/chat-stream?format=sse&thinking=false&prompt=${encodeURIComponent(prompt)}`,
    'text/event-stream',
  );

export const TARGETS: Target[] = [
  {
    key: 'baseline',
    label: 'bare Node pipe (baseline)',
    server: 'baseline',
    wire: 'openai-sse',
    // The exact body the proxy sends upstream for the same prompt (thinking off).
    request: (prompt) => ({
      method: 'POST',
      path: '/',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify(
        buildUpstreamBody({
          messages: [{ role: 'user', content: prompt }],
          model: MODEL,
          thinking: false,
        }),
      ),
    }),
  },
  {
    key: 'sse',
    label: '/chat-stream SSE',
    server: 'proxy',
    wire: 'proxy-sse',
    request: sseRequest,
  },
  {
    // The same stream as `sse`, from a proxy that journals every stream to Redis (REDIS_URL set,
    // as a multi-worker deployment runs it): sse-redis minus sse = what the shared journal costs
    // the proxy. Redis's own CPU is measured apart (the report's "CPU elsewhere").
    key: 'sse-redis',
    label: '/chat-stream SSE, Redis journal',
    server: 'proxy-redis',
    wire: 'proxy-sse',
    request: sseRequest,
  },
  {
    key: 'text',
    label: '/chat-stream text',
    server: 'proxy',
    wire: 'text',
    request: (prompt) =>
      GET(`/chat-stream?format=text&thinking=false&prompt=${encodeURIComponent(prompt)}`, '*/*'),
  },
  {
    // The same stream as `sse`, asked by POST: not a GET, so express.static (mounted before the
    // API routes) does not stat public/ for it. GET minus POST = what that costs.
    key: 'sse-post',
    label: 'POST /chat-stream SSE',
    server: 'proxy',
    wire: 'proxy-sse',
    optional: true,
    request: (prompt) => ({
      method: 'POST',
      path: '/chat-stream',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ prompt, format: 'sse', thinking: false }),
    }),
  },
  {
    key: 'v1',
    label: '/v1/chat/completions',
    server: 'proxy',
    wire: 'openai-sse',
    probe: true,
    request: (prompt) => ({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({
        model: MODEL,
        messages: [{ role: 'user', content: prompt }],
        stream: true,
        thinking: { type: 'disabled' },
      }),
    }),
  },
];

/** One load shape: `streams` streams of `tokens` tokens, `concurrency` at a time. */
export interface Variant {
  key: string;
  label: string;
  streams: number;
  concurrency: number;
  tokens: number;
  /** Extra simulator directives: pacing (`delay=20`), write shape (`frag=3`, `coalesce`). */
  directives: string;
  /** Streams run (same shape, other prompts) before measuring: JIT, pools, heap. */
  warmup: { streams: number; concurrency: number; tokens: number; directives: string };
  timeoutMs: number;
  /**
   * After the measured run, run the same number of longer streams and, once all are open, read
   * the live memory (RSS and JS heap after a forced GC) per open stream.
   */
  memoryProbe?: { tokens: number; directives: string };
}

export interface Scenario {
  key: string;
  title: string;
  what: string;
  variants: Variant[];
}

export function scenarios(quick: boolean): Scenario[] {
  const q = (full: number, small: number) => (quick ? small : full);
  const framing: Variant[] = [];
  const frags = [1, 2, 3, 4, 5, 6, 7];
  for (const frag of frags) {
    framing.push({
      key: `frag${frag}`,
      label: `frag=${frag}`,
      streams: q(20, 4),
      concurrency: q(10, 4),
      tokens: q(60, 30),
      directives: `frag=${frag}`,
      warmup: { streams: q(10, 2), concurrency: 5, tokens: 20, directives: `frag=${frag}` },
      timeoutMs: 120_000,
    });
  }
  framing.push({
    key: 'coalesce',
    label: 'coalesce',
    streams: q(100, 10),
    concurrency: 10,
    tokens: q(200, 100),
    directives: 'coalesce',
    warmup: { streams: 20, concurrency: 10, tokens: 50, directives: 'coalesce' },
    timeoutMs: 60_000,
  });
  return [
    {
      key: 'latency',
      title: 'Latency',
      what: 'one stream at a time, short answers, no pacing: the cost of setting a stream up',
      variants: [
        {
          key: 'latency',
          label: `${q(200, 40)} x 20 tokens, 1 at a time`,
          streams: q(200, 40),
          concurrency: 1,
          tokens: 20,
          directives: '',
          // One at a time, each stream runs the per-stream code once. After 100 streams the
          // proxy (Express, axios, the route: far more JavaScript per request than the pipe) was
          // still being optimised by V8, and its TTFT ratio to the pipe was still falling; from
          // about 500 on it held steady (docs/BENCHMARKS.md, "What is measured"). The pipe gets
          // the same warm-up.
          warmup: { streams: q(1000, 20), concurrency: 1, tokens: 20, directives: '' },
          timeoutMs: 30_000,
        },
      ],
    },
    {
      key: 'throughput',
      title: 'Throughput',
      what: '50 streams at a time, as fast as the upstream can go: CPU per token',
      variants: [
        {
          key: 'throughput',
          label: `${q(2000, 200)} x 200 tokens, ${q(50, 20)} at a time`,
          streams: q(2000, 200),
          concurrency: q(50, 20),
          tokens: 200,
          directives: '',
          // Until the 3000th stream or so, the CPU per stream of both servers is still falling
          // (V8 still compiling, for the proxy far more code than for the pipe): with 200 streams
          // of warm-up, the measurement took in the proxy's steepest part and read ~0.1 higher
          // than the steady state a running server is in (docs/BENCHMARKS.md, "What is
          // measured"). The pipe gets the same warm-up.
          warmup: { streams: q(3000, 40), concurrency: q(50, 20), tokens: 200, directives: '' },
          timeoutMs: 120_000,
        },
      ],
    },
    {
      key: 'cost',
      title: 'Cost per stream and per token',
      what:
        '50 at a time, as fast as the upstream can go, answers of 20 and of 1000 tokens: the CPU ' +
        'split into a fixed cost per stream and a cost per token',
      variants: [
        {
          key: 'short',
          label: `${q(5000, 500)} x 20 tokens, 50 at a time`,
          streams: q(5000, 500),
          concurrency: 50,
          tokens: 20,
          directives: '',
          // Steady from about 4000 streams on (as throughput, above).
          warmup: { streams: q(5000, 100), concurrency: 50, tokens: 20, directives: '' },
          timeoutMs: 60_000,
        },
        {
          key: 'long',
          label: `${q(200, 40)} x 1000 tokens, 50 at a time`,
          streams: q(200, 40),
          concurrency: 50,
          tokens: 1000,
          directives: '',
          warmup: { streams: q(300, 20), concurrency: 50, tokens: 1000, directives: '' },
          timeoutMs: 120_000,
        },
      ],
    },
    {
      key: 'slow',
      title: 'Many slow streams',
      what: 'all streams open at once, 20 ms per token: memory per open stream, tail latency',
      variants: [
        {
          key: 'slow',
          label: `${q(1000, 200)} open at once x 50 tokens at 20 ms`,
          streams: q(1000, 200),
          concurrency: q(1000, 200),
          tokens: 50,
          directives: 'delay=20',
          warmup: {
            streams: q(1000, 200),
            concurrency: q(1000, 200),
            tokens: 5,
            directives: 'delay=20',
          },
          timeoutMs: 120_000,
          // 200 tokens at 25 ms: 5 s per stream, longer than it takes to open them all.
          memoryProbe: { tokens: 200, directives: 'delay=25' },
        },
      ],
    },
    {
      key: 'framing',
      title: 'Framing',
      what: 'upstream writes split every 1..7 bytes (inside UTF-8 sequences) or coalesced into one',
      variants: framing,
    },
  ];
}

let promptCounter = 0;

/** Jobs with distinct prompts (so answers differ) and the simulator's exact expected answer. */
export function makeJobs(
  target: Target,
  tag: string,
  n: number,
  tokens: number,
  directives: string,
): Job[] {
  const jobs: Job[] = [];
  for (let i = 0; i < n; i++) {
    const prompt = `bench ${tag} ${++promptCounter} [[tokens=${tokens}${directives ? ' ' + directives : ''}]]`;
    const answer = simulateAnswer(prompt);
    jobs.push({
      request: target.request(prompt),
      expected: { text: answer.text, tokens: answer.content },
    });
  }
  return jobs;
}
