// The CLI, spawned as a user would run it, against the simulator directly and through a proxy.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { simulateAnswer } from '../../src/simulator/answer';
import { runCli, type CliRun } from '../helpers/proc';
import { startStack, TEST_KEY, waitFor, type Stack } from '../helpers/stack';

const cli = runCli;
type Run = CliRun;

let stack: Stack;
let dir: string;
beforeAll(async () => {
  stack = await startStack();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dsp-cli-'));
});
afterAll(() => stack.close());

const direct = () => ({ DEEPSEEK_API_KEY: TEST_KEY, DEEPSEEK_BASE_URL: stack.sim.url });

describe('deepseek-stream', () => {
  it('through a proxy with --server, into a file: the file is the answer', async () => {
    const file = path.join(dir, 'server.txt');
    const r = cli(['--server', stack.url, '-o', file, 'cli via proxy']);
    expect(await r.code).toBe(0);
    expect(fs.readFileSync(file, 'utf8')).toBe(simulateAnswer('cli via proxy').text);
    expect(fs.existsSync(file + '.resume.json')).toBe(false);
    expect(r.stderr()).toBe(''); // no progress line when stderr is not a terminal
  }, 30_000);

  it('straight to DeepSeek (the simulator), to stdout; and the prompt from stdin', async () => {
    const a = cli(['--no-thinking', 'cli direct'], direct());
    expect(await a.code).toBe(0);
    expect(a.stdout()).toBe(simulateAnswer('cli direct').text);
    const b = cli([], direct(), 'cli from stdin');
    expect(await b.code).toBe(0);
    expect(b.stdout()).toBe(simulateAnswer('cli from stdin').text);
  }, 30_000);

  it('Ctrl-C keeps the partial file (exit 130); --resume completes it exactly', async () => {
    const prompt = 'cli resume direct [[tokens=300 delay=10]]';
    const file = path.join(dir, 'direct.txt');
    const first = cli(['--no-thinking', '-o', file, prompt], direct());
    await waitFor(() => fs.existsSync(file) && fs.statSync(file).size > 30, 15_000, 'some output');
    first.child.kill('SIGINT');
    expect(await first.code).toBe(130);
    const partial = fs.readFileSync(file, 'utf8');
    const full = simulateAnswer(prompt).text;
    expect(partial.length).toBeGreaterThan(0);
    expect(partial.length).toBeLessThan(full.length);
    expect(full.startsWith(partial)).toBe(true);
    const second = cli(['--no-thinking', '--resume', '-o', file, prompt], direct());
    expect(await second.code).toBe(0);
    expect(fs.readFileSync(file, 'utf8')).toBe(full);
    const beta = stack.sim.requests.filter(
      (r) => r.path === '/beta/chat/completions' && r.body.messages?.[0]?.content === prompt,
    );
    expect(beta.length).toBeGreaterThanOrEqual(1);
  }, 40_000);

  it('through a proxy: an interrupted download resumes from the journal with Range', async () => {
    const s = await startStack({ resumeGraceMs: 10_000 });
    try {
      const prompt = 'cli resume server [[tokens=300 delay=10]]';
      const file = path.join(dir, 'server-resume.txt');
      const first = cli(['--server', s.url, '--no-thinking', '-o', file, prompt]);
      await waitFor(
        () => fs.existsSync(file) && fs.statSync(file).size > 30,
        15_000,
        'some output',
      );
      first.child.kill('SIGINT');
      expect(await first.code).toBe(130);
      expect(fs.existsSync(file + '.resume.json')).toBe(true);
      const second = cli(['--server', s.url, '--resume', '-o', file, prompt]);
      expect(await second.code).toBe(0);
      expect(fs.readFileSync(file, 'utf8')).toBe(simulateAnswer(prompt).text);
      expect(s.sim.requests.filter((r) => r.body.messages?.[0]?.content === prompt)).toHaveLength(
        1,
      );
    } finally {
      await s.close();
    }
  }, 40_000);

  it('bad usage exits 2', async () => {
    const unknown = cli(['--bogus', 'x']);
    expect(await unknown.code).toBe(2);
    expect(unknown.stderr()).toMatch(/usage: deepseek-stream/);
    expect(await cli(['--resume', 'x'], direct()).code).toBe(2);
    expect(await cli([], direct(), '').code).toBe(2);
    expect(await cli(['no key here']).code).toBe(2);
  }, 30_000);

  it('an upstream failure exits 1 with the error code on stderr', async () => {
    const direct402 = cli(['pay [[status=402]]'], direct());
    expect(await direct402.code).toBe(1);
    expect(direct402.stderr()).toMatch(/upstream_insufficient_balance/);
    const proxied = cli(['--server', stack.url, 'pay too [[status=402]]']);
    expect(await proxied.code).toBe(1);
    expect(proxied.stderr()).toMatch(/upstream_insufficient_balance/);
  }, 30_000);
});

describe('deepseek-stream --server, when the proxy guards its API', () => {
  const CLIENT_KEY = 'cli-client-key-5e4d3c2b1a';
  const SECRET = 'cli-signing-secret-0a9b8c7d';
  let keyed: Stack;
  let signed: Stack;
  beforeAll(async () => {
    keyed = await startStack({ proxyApiKeys: [CLIENT_KEY] });
    // A grace period so the signed --resume below can find its stream in the journal.
    signed = await startStack({ signingSecret: SECRET, resumeGraceMs: 10_000 });
  });
  afterAll(async () => {
    await keyed.close();
    await signed.close();
  });

  /** Exit 1 with one line naming the refusal and the fix, and neither credential in it. */
  async function expectRefused(r: Run, code: RegExp, fix: RegExp): Promise<void> {
    expect(await r.code).toBe(1);
    expect(r.stdout()).toBe('');
    const lines = r.stderr().split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^deepseek-stream: /);
    expect(lines[0]).toMatch(code);
    expect(lines[0]).toMatch(fix);
    expect(r.stderr()).not.toContain(CLIENT_KEY);
    expect(r.stderr()).not.toContain(SECRET);
  }

  it('with --api-key the answer streams whole; without a key, or with a wrong one, exit 1', async () => {
    const ok = cli(['--server', keyed.url, '--api-key', CLIENT_KEY, 'cli keyed']);
    expect(await ok.code).toBe(0);
    expect(ok.stdout()).toBe(simulateAnswer('cli keyed').text);
    expect(ok.stderr()).toBe('');
    await expectRefused(cli(['--server', keyed.url, 'cli keyed']), /unauthorized/, /--api-key/);
    await expectRefused(
      cli(['--server', keyed.url, '--api-key', `${CLIENT_KEY}x`, 'cli keyed']),
      /unauthorized: the API key is not valid/,
      /DEEPSEEK_STREAM_API_KEY/,
    );
  }, 30_000);

  it('with --signing-secret the answer streams whole; unsigned or a wrong secret, exit 1', async () => {
    const ok = cli(['--server', signed.url, '--signing-secret', SECRET, 'cli signed']);
    expect(await ok.code).toBe(0);
    expect(ok.stdout()).toBe(simulateAnswer('cli signed').text);
    await expectRefused(
      cli(['--server', signed.url, '--signing-secret', `${SECRET}x`, 'cli signed']),
      /bad_signature: the signature does not match/,
      /--signing-secret/,
    );
    await expectRefused(
      cli(['--server', signed.url, 'cli signed']),
      /bad_signature/,
      /DEEPSEEK_STREAM_SIGNING_SECRET/,
    );
  }, 30_000);

  it('a signed --resume is signed too, and completes the file', async () => {
    const prompt = 'cli resume signed [[tokens=300 delay=10]]';
    const file = path.join(dir, 'signed-resume.txt');
    const args = ['--server', signed.url, '--signing-secret', SECRET, '-o', file];
    const first = cli([...args, '--no-thinking', prompt]);
    await waitFor(() => fs.existsSync(file) && fs.statSync(file).size > 30, 15_000, 'some output');
    first.child.kill('SIGINT');
    expect(await first.code).toBe(130);
    // Neither credential is written to disk for the resume.
    expect(fs.readFileSync(file + '.resume.json', 'utf8')).not.toContain(SECRET);
    const second = cli([...args, '--resume', prompt]);
    expect(await second.code).toBe(0);
    expect(fs.readFileSync(file, 'utf8')).toBe(simulateAnswer(prompt).text);
    expect(
      signed.sim.requests.filter((r) => r.body.messages?.[0]?.content === prompt),
    ).toHaveLength(1);
  }, 40_000);

  it('DEEPSEEK_STREAM_API_KEY and DEEPSEEK_STREAM_SIGNING_SECRET work; the flags win', async () => {
    const byEnvKey = cli(['--server', keyed.url, 'cli env key'], {
      DEEPSEEK_STREAM_API_KEY: CLIENT_KEY,
    });
    expect(await byEnvKey.code).toBe(0);
    expect(byEnvKey.stdout()).toBe(simulateAnswer('cli env key').text);
    const byEnvSecret = cli(['--server', signed.url, 'cli env secret'], {
      DEEPSEEK_STREAM_SIGNING_SECRET: SECRET,
    });
    expect(await byEnvSecret.code).toBe(0);
    expect(byEnvSecret.stdout()).toBe(simulateAnswer('cli env secret').text);
    // A wrong value in the environment, the right one on the command line: the flag is used.
    const flagWins = cli(['--server', keyed.url, '--api-key', CLIENT_KEY, 'cli flag wins'], {
      DEEPSEEK_STREAM_API_KEY: 'not-the-key',
    });
    expect(await flagWins.code).toBe(0);
    const flagLoses = cli(['--server', signed.url, '--signing-secret', 'wrong', 'cli flag'], {
      DEEPSEEK_STREAM_SIGNING_SECRET: SECRET,
    });
    await expectRefused(flagLoses, /bad_signature/, /--signing-secret/);
  }, 30_000);

  it('--api-key without --server is a usage error (exit 2) that does not echo the key', async () => {
    const r = cli(['--api-key', CLIENT_KEY, 'x'], direct());
    expect(await r.code).toBe(2);
    expect(r.stderr()).toMatch(/--api-key and --signing-secret are for --server/);
    expect(r.stderr()).not.toContain(CLIENT_KEY);
  }, 30_000);
});
