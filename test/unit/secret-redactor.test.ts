// secretRedactor(): the DeepSeek key, whole or a piece of a long one, never leaves in a message;
// a dummy key (`x`, `EMPTY`) does not garble ordinary words.

import { secretRedactor } from '../../src/errors';

describe('secretRedactor', () => {
  it('hides a long key whole and any piece of 8 characters or more', () => {
    const key = 'sk-0123456789abcdef0123456789abcdef';
    const redact = secretRedactor(key);
    expect(redact(`bad key ${key} given`)).toBe('bad key [redacted] given');
    expect(redact(`key ${key.slice(3)} invalid`)).toBe('key [redacted] invalid');
    expect(redact(`quoted: "${key.slice(0, 20)}...`)).toBe('quoted: "[redacted]...');
    expect(redact('nothing secret here')).toBe('nothing secret here');
  });

  it('hides a short key only whole, and a dummy key not at all', () => {
    expect(secretRedactor('abc123xyz')('key abc123xyz, and abc123 alone')).toBe(
      'key [redacted], and abc123 alone',
    );
    expect(secretRedactor('x')('the stream exceeded its limit')).toBe(
      'the stream exceeded its limit',
    );
    expect(secretRedactor('EMPTY')('EMPTY response from model')).toBe('EMPTY response from model');
    expect(secretRedactor(undefined)('anything')).toBe('anything');
  });
});
