// simulator/answer.ts: the simulator's deterministic answers. The same prompt always gives the
// same tokens, so tests can compute the exact text a stream must deliver. Text mixes ASCII,
// accented Latin, CJK and emoji so multi-byte characters cross every kind of boundary.

const WORDS = [
  ' stream',
  ' token',
  ' proxy',
  ' answer',
  ' DeepSeek',
  ' the',
  ' of',
  ' and',
  ' fast',
  ' node',
  ' café',
  ' naïve',
  ' résumé',
  ' Zürich',
  ' 流式',
  '传输',
  '数据',
  '模型',
  ' 世界',
  'の',
  ' 🚀',
  ' ✨',
  ' 👩‍💻',
  ' ok',
  ',',
  '.',
  ' data',
  ' event',
  ' byte',
  ' 😀',
];

const THOUGHTS = [
  ' Let',
  ' me',
  ' think',
  ' about',
  ' this',
  ' 嗯',
  ',',
  ' the',
  ' user',
  ' asks',
  ' 🤔',
  '.',
];

/** FNV-1a, 32 bits: a stable seed from the prompt. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Token i of a sequence seeded by `seed`: a pure function, so long answers need no array. */
export function tokenAt(seed: number, i: number, kind: 'content' | 'reasoning'): string {
  let x = (seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  const list = kind === 'content' ? WORDS : THOUGHTS;
  const word = list[(x >>> 0) % list.length]!;
  return i === 0 ? word.trimStart() || word : word;
}

export const DEFAULT_CONTENT_TOKENS = 24;
export const DEFAULT_REASONING_TOKENS = 8;
/**
 * Bounds on what a prompt can ask for. The answer is built in memory before it streams, and in
 * `npm start` without a key the simulator shares the proxy's process: `[[tokens=99999999999]]`
 * typed in the demo page ran out of heap and took the proxy down. A directive above a bound is
 * clamped to it (tests compute the same clamped answer through simulateAnswer).
 */
export const MAX_CONTENT_TOKENS = 1_000_000;
export const MAX_REASONING_TOKENS = 1_000_000;
/** Content tokens x `repeat`: about 36 M characters at most (the longest word has 9). */
export const MAX_TOKEN_REPEATS = 4_000_000;

export interface AnswerShape {
  contentTokens?: number;
  reasoningTokens?: number;
  thinking?: boolean;
}

export interface SimulatedAnswer {
  reasoning: string[];
  content: string[];
  text: string;
  reasoningText: string;
}

/**
 * The seed of a prompt's answer. A `[[...]]` directive block does not change the answer (only
 * `tokens=` and `repeat=` in it do), so a faulty run and a clean run can be compared.
 */
export function seedOf(prompt: string): number {
  return hashString(prompt.replace(/\s*\[\[[^\]]*\]\]/, ''));
}

/**
 * The answer the simulator gives for a prompt (the last user message). Tests use it as the
 * expected output.
 */
export function simulateAnswer(prompt: string, shape: AnswerShape = {}): SimulatedAnswer {
  const seed = seedOf(prompt);
  const n = Math.min(
    shape.contentTokens ?? directiveNumber(prompt, 'tokens') ?? DEFAULT_CONTENT_TOKENS,
    MAX_CONTENT_TOKENS,
  );
  const thinking = shape.thinking ?? false;
  const r = thinking
    ? Math.min(
        shape.reasoningTokens ?? directiveNumber(prompt, 'rtokens') ?? DEFAULT_REASONING_TOKENS,
        MAX_REASONING_TOKENS,
      )
    : 0;
  // `repeat=K` makes every token K times longer: big streams without millions of events.
  const repeat = Math.min(
    directiveNumber(prompt, 'repeat') ?? 1,
    Math.max(1, Math.floor(MAX_TOKEN_REPEATS / Math.max(1, n))),
  );
  const content: string[] = [];
  for (let i = 0; i < n; i++) content.push(tokenAt(seed, i, 'content').repeat(repeat));
  const reasoning: string[] = [];
  for (let i = 0; i < r; i++) reasoning.push(tokenAt(seed, i, 'reasoning'));
  return { reasoning, content, text: content.join(''), reasoningText: reasoning.join('') };
}

function directiveNumber(prompt: string, key: string): number | undefined {
  const m = new RegExp(`\\[\\[[^\\]]*\\b${key}=(\\d+)`).exec(prompt);
  return m ? Number(m[1]) : undefined;
}
