// The CLI's review fixes, spawned as a user would run it against the simulator and a proxy on
// loopback: resume at a byte offset inside a character, output errors, checks before the output
// is touched, progress with the answer on the same terminal, the library's ALLOWED_MODELS,
// signed requests in the same second, and the --server URL and resume file checks.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { streamChat } from '../../src/library';
import { sign, signingPayload } from '../../src/middleware/auth';
import { simulateAnswer } from '../../src/simulator/answer';
import { startSimulator } from '../../src/simulator/server';
import { root, runCli, tsx, type CliRun } from '../helpers/proc';
import { startStack, TEST_KEY, waitFor, type Stack } from '../helpers/stack';

const cli = runCli;
type Run = CliRun;

/** stderr is exactly one `deepseek-stream: ...` line: no stack trace, no usage text. */
function oneLine(r: Run, pattern: RegExp): void {
  const lines = r.stderr().split('\n').filter(Boolean);
  expect(lines).toEqual([expect.stringMatching(/^deepseek-stream: /)]);
  expect(lines[0]).toMatch(pattern);
}

let stack: Stack; // resume grace on: an interrupted download can be continued
let dir: string;
beforeAll(async () => {
  stack = await startStack({ resumeGraceMs: 20_000 });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dsp-cli-review-'));
});
afterAll(() => stack.close());

const direct = () => ({ DEEPSEEK_API_KEY: TEST_KEY, DEEPSEEK_BASE_URL: stack.sim.url });
const asked = (s: Stack, prompt: string) =>
  s.sim.requests.filter((r) => r.body.messages?.some((m) => m.content === prompt));

/** Starts a --server download into `file`, interrupts it once some bytes are in (exit 130). */
async function interruptedDownload(prompt: string, file: string, minBytes: number) {
  const first = cli(['--server', stack.url, '--no-thinking', '-o', file, prompt]);
  await waitFor(
    () => fs.existsSync(file) && fs.statSync(file).size >= minBytes,
    15_000,
    'some output',
  );
  first.child.kill('SIGINT');
  expect(await first.code).toBe(130);
  expect(fs.existsSync(`${file}.resume.json`)).toBe(true);
}

describe('--server --resume', () => {
  it('a partial file that ends inside a UTF-8 character resumes to the exact answer', async () => {
    const prompt = 'review midchar [[tokens=300 delay=5]]';
    const full = Buffer.from(simulateAnswer(prompt).text);
    // The first lead byte of a multi-byte character past the start: the file will end with it.
    let lead = 8;
    while (full[lead]! < 0xc0) lead++;
    const file = path.join(dir, 'midchar.txt');
    await interruptedDownload(prompt, file, lead + 1);
    // As a download cut there leaves it (a slow network, a proxy that re-chunks): one byte of a
    // character of two to four.
    fs.writeFileSync(file, full.subarray(0, lead + 1));
    const resumed = cli(['--server', stack.url, '--resume', '-o', file, prompt]);
    expect(await resumed.code).toBe(0);
    expect(resumed.stderr()).toBe('');
    expect(fs.readFileSync(file).equals(full)).toBe(true);
    expect(fs.existsSync(`${file}.resume.json`)).toBe(false);
  }, 60_000);

  it('direct --resume of a file that ends inside a character: the character comes again', async () => {
    const prompt = 'review midchar direct [[tokens=200]]';
    const full = Buffer.from(simulateAnswer(prompt).text);
    let lead = 8;
    while (full[lead]! < 0xc0) lead++;
    const file = path.join(dir, 'midchar-direct.txt');
    fs.writeFileSync(file, full.subarray(0, lead + 1));
    const resumed = cli(['--no-thinking', '--resume', '-o', file, prompt], direct());
    expect(await resumed.code).toBe(0);
    expect(fs.readFileSync(file).equals(full)).toBe(true);
    // The prefix sent is whole characters: no U+FFFD for the cut one.
    const sent = asked(stack, prompt).at(-1)?.body.messages?.at(-1)?.content;
    expect(sent).toBe(full.subarray(0, lead).toString('utf8'));
  }, 30_000);

  it('with no prompt, does not read stdin: a pipe left open does not stall it', async () => {
    const prompt = 'review stdin open [[tokens=300 delay=5]]';
    const file = path.join(dir, 'stdin-open.txt');
    await interruptedDownload(prompt, file, 30);
    const resumed = cli(['--server', stack.url, '--resume', '-o', file], {}, 'open');
    expect(await resumed.code).toBe(0);
    expect(fs.readFileSync(file, 'utf8')).toBe(simulateAnswer(prompt).text);
  }, 60_000);

  it('with no resume file: one line, exit 2, and no resume file is made up', async () => {
    const file = path.join(dir, 'no-sidecar.txt');
    fs.writeFileSync(file, 'partial');
    for (const extra of [[], ['the real prompt']]) {
      const r = cli(['--server', stack.url, '--resume', '-o', file, ...extra], {}, 'open');
      expect(await r.code).toBe(2);
      oneLine(r, /nothing to resume/);
      expect(fs.existsSync(`${file}.resume.json`)).toBe(false);
      expect(fs.readFileSync(file, 'utf8')).toBe('partial');
    }
  }, 60_000);
});

describe('output errors', () => {
  it('-o into a missing directory or onto a directory: one line, exit 2, no request', async () => {
    const prompt = 'review unwritable output';
    const missing = cli(['-o', path.join(dir, 'no/such/dir/out.txt'), prompt], direct());
    expect(await missing.code).toBe(2);
    oneLine(missing, /cannot write .*out\.txt: ENOENT/);
    const isDir = cli(['--server', stack.url, '-o', dir, prompt]);
    expect(await isDir.code).toBe(2);
    oneLine(isDir, /EISDIR/);
    expect(fs.existsSync(`${dir}.resume.json`)).toBe(false);
    expect(asked(stack, prompt)).toHaveLength(0);
  }, 30_000);

  it('a write that fails mid-answer (disk full): one line, exit 1', async () => {
    const r = cli(['-o', '/dev/full', 'review disk full [[tokens=200]]'], direct());
    expect(await r.code).toBe(1);
    oneLine(r, /cannot write \/dev\/full: ENOSPC/);
  }, 30_000);

  it.each(['direct', 'server'])(
    'stdout closed by the reader (| head), %s: no crash, and the request is stopped',
    async (mode) => {
      const prompt = `review epipe ${mode} [[tokens=3000 delay=2]]`;
      // Through a proxy without a resume grace: a client that leaves stops the upstream at once.
      const s = mode === 'direct' ? stack : await startStack();
      const r =
        mode === 'direct'
          ? cli(['--no-thinking', prompt], direct())
          : cli(['--server', s.url, '--no-thinking', prompt]);
      // Close the read end, as `head -c 20` does, once the answer has begun.
      r.child.stdout.once('data', () => r.child.stdout.destroy());
      expect(await r.code).toBe(1);
      expect(r.stderr()).not.toMatch(/Unhandled|EPIPE|\n\s+at /);
      try {
        await waitFor(
          () => asked(s, prompt).some((q) => q.clientClosed),
          15_000,
          'the upstream request closed',
        );
      } finally {
        if (s !== stack) await s.close();
      }
    },
    30_000,
  );
});

describe('checks before the output file is touched', () => {
  it('a usage or configuration error leaves an existing -o file as it was', async () => {
    const file = path.join(dir, 'keep.txt');
    fs.writeFileSync(file, 'precious partial answer\n');
    const noKey = cli(['-o', file, 'review keep']);
    expect(await noKey.code).toBe(2);
    oneLine(noKey, /DEEPSEEK_API_KEY/);
    expect(fs.readFileSync(file, 'utf8')).toBe('precious partial answer\n');
    const badModel = cli(['-o', file, 'review keep'], {
      ...direct(),
      DEEPSEEK_MODEL: 'not-a-model',
    });
    expect(await badModel.code).toBe(2);
    oneLine(badModel, /DEEPSEEK_MODEL: "not-a-model" is not in ALLOWED_MODELS/);
    expect(fs.readFileSync(file, 'utf8')).toBe('precious partial answer\n');
    expect(badModel.stderr()).not.toContain(TEST_KEY);
  }, 30_000);

  it.each([['http://127.0.0.1:99999'], ['http://'], ['ftp://127.0.0.1:1']])(
    '--server %s is a usage error (exit 2): no resume file, no output file',
    async (url) => {
      const file = path.join(dir, `bad-url-${url.replace(/\W/g, '')}.txt`);
      const r = cli(['--server', url, '-o', file, 'review bad url']);
      expect(await r.code).toBe(2);
      expect(r.stderr()).toMatch(/^deepseek-stream: --server /);
      expect(fs.existsSync(file)).toBe(false);
      expect(fs.existsSync(`${file}.resume.json`)).toBe(false);
    },
    30_000,
  );

  it('credentials in the --server URL are refused, never written or printed', async () => {
    const file = path.join(dir, 'creds.txt');
    const r = cli(['--server', `http://user:s3cr3t-pass@127.0.0.1:1`, '-o', file, 'review creds']);
    expect(await r.code).toBe(2);
    expect(r.stderr()).toMatch(/^deepseek-stream: .*--api-key/);
    expect(r.stderr()).not.toContain('s3cr3t-pass');
    expect(fs.existsSync(`${file}.resume.json`)).toBe(false);
  }, 30_000);
});

describe('the progress line', () => {
  const hasScript = spawnSync('script', ['--version']).status === 0;
  if (!hasScript) {
    console.warn(
      'SKIPPED 2 progress-line tests: util-linux `script` (a pseudo-terminal) is missing',
    );
  }
  // Skipped only where util-linux `script` is missing (warned above): they need a terminal.
  const itInPty = hasScript ? it : it.skip;
  const sh = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

  /** Runs a shell command in a pseudo-terminal (util-linux script) and returns what it shows. */
  function inPty(command: string): Promise<{ code: number | null; screen: string }> {
    const child = spawn('script', ['-qec', command, '/dev/null'], {
      cwd: root,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...direct() },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let raw = '';
    child.stdout.on('data', (b: Buffer) => (raw += b.toString()));
    child.stdin.end();
    const deadline = setTimeout(() => child.kill('SIGKILL'), 25_000);
    return new Promise((resolve) =>
      child.on('exit', (code) => {
        clearTimeout(deadline);
        resolve({ code, screen: raw });
      }),
    );
  }

  itInPty(
    'with the answer on the same terminal: no redraw over it, one summary line at the end',
    async () => {
      const prompt = 'review pty [[tokens=120 delay=10]]';
      const { code, screen } = await inPty(
        `${sh(tsx)} src/cli/main.ts --no-thinking ${sh(prompt)}`,
      );
      expect(code).toBe(0);
      const text = screen.replace(/\r\n/g, '\n'); // the terminal's own line endings
      expect(text).not.toContain('\r'); // a \r redraw would land on the answer
      expect(text).toContain(simulateAnswer(prompt).text);
      expect(text).toMatch(/\n\d+ B {2}\d+ tokens {2}[\d.]+ tok\/s {2}[\d.]+ s\n$/);
    },
    30_000,
  );

  itInPty(
    'with the answer in a file or a pipe: the live line on the terminal, as before',
    async () => {
      const prompt = 'review pty file [[tokens=120 delay=10]]';
      const file = path.join(dir, 'pty.txt');
      const { code, screen } = await inPty(
        `${sh(tsx)} src/cli/main.ts --no-thinking -o ${sh(file)} ${sh(prompt)}`,
      );
      expect(code).toBe(0);
      expect(screen).toMatch(/\r\d+ B {2}\d+ tokens/);
      expect(fs.readFileSync(file, 'utf8')).toBe(simulateAnswer(prompt).text);
    },
    30_000,
  );
});

describe('ALLOWED_MODELS outside the proxy', () => {
  const MODELS = { DEEPSEEK_MODEL: 'deepseek-v5', ALLOWED_MODELS: 'deepseek-v5,deepseek-v4-flash' };

  it('the library and the CLI use a DEEPSEEK_MODEL that ALLOWED_MODELS allows', async () => {
    const sim = await startSimulator({ models: ['deepseek-v5', 'deepseek-v4-flash'] });
    const saved = {
      DEEPSEEK_MODEL: process.env.DEEPSEEK_MODEL,
      ALLOWED_MODELS: process.env.ALLOWED_MODELS,
    };
    const restore = () => {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    };
    try {
      Object.assign(process.env, MODELS);
      let text = '';
      for await (const d of streamChat({
        prompt: 'review models lib',
        apiKey: TEST_KEY,
        baseUrl: sim.url,
      })) {
        if (d.type === 'content') text += d.text;
      }
      restore();
      expect(text).toBe(simulateAnswer('review models lib').text);
      const r = cli(['review models cli'], {
        DEEPSEEK_API_KEY: TEST_KEY,
        DEEPSEEK_BASE_URL: sim.url,
        ...MODELS,
      });
      expect(await r.code).toBe(0);
      expect(r.stdout()).toBe(simulateAnswer('review models cli').text);
      expect(sim.requests.map((q) => q.body.model)).toEqual(['deepseek-v5', 'deepseek-v5']);
    } finally {
      restore();
      await sim.close();
    }
  }, 30_000);
});

describe('signed requests (--signing-secret)', () => {
  const SECRET = 'review-signing-secret-4f3e2d';

  it('two identical requests are signed differently, each over the path it sends', async () => {
    const seen: { url: string; ts: string; sig: string; body: string }[] = [];
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (b: Buffer) => (body += b.toString()));
      req.on('end', () => {
        seen.push({
          url: req.url ?? '',
          ts: String(req.headers['x-timestamp']),
          sig: String(req.headers['x-signature']),
          body,
        });
        res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const args = ['--server', url, '--signing-secret', SECRET, 'review same'];
      const [a, b] = [cli(args), cli(args)];
      expect([await a.code, await b.code]).toEqual([0, 0]);
      expect(seen).toHaveLength(2);
      expect(seen[0]!.body).toBe(seen[1]!.body);
      expect(seen[0]!.url).not.toBe(seen[1]!.url);
      expect(seen[0]!.sig).not.toBe(seen[1]!.sig);
      for (const s of seen) {
        expect(s.url).toMatch(/^\/chat-stream\?nonce=[0-9a-f]+$/);
        expect(s.sig).toBe(sign(SECRET, signingPayload(s.ts, 'POST', s.url, s.body)));
      }
    } finally {
      server.close();
    }
  }, 30_000);

  it('the proxy accepts both of two identical signed runs started together', async () => {
    const signed = await startStack({ signingSecret: SECRET });
    try {
      const args = ['--server', signed.url, '--signing-secret', SECRET, 'review same proxy'];
      const runs = [cli(args), cli(args)];
      for (const r of runs) {
        expect(await r.code).toBe(0);
        expect(r.stdout()).toBe(simulateAnswer('review same proxy').text);
        expect(r.stderr()).not.toContain(SECRET);
      }
    } finally {
      await signed.close();
    }
  }, 30_000);
});
