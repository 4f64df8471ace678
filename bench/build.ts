// bench/build.ts: compile what the child processes run (src/ and the bench children) to plain
// JavaScript in a temporary directory, the way `npm run build` (tsc) would emit it, so that the
// processes measured run the same code as `npm start`.
//
// Why not run the children under tsx: tsx compiles with esbuild's keepNames, which wraps every
// named function expression in a `__name(fn, "name")` call (Object.defineProperty). That costs
// CPU each time a closure is created and ~250 bytes of property storage per closure: measured,
// about 9 KiB of the proxy's live heap per open stream (the proxy creates many closures per
// stream; a bare pipe few), a bias against the proxy that production never pays.
//
// Emit is per file (ts.transpileModule, as the project has isolatedModules), with no type check:
// an unrelated type error in work in progress must not stop a benchmark. Modules resolve through
// NODE_PATH (the project's node_modules); public/ is linked in for the demo router.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ts from 'typescript';

const ROOT = path.resolve(__dirname, '..');
const CHILD_FILES = [
  'bench/child-ipc.ts',
  'bench/proxy-child.ts',
  'bench/baseline-child.ts',
  'bench/sim-child.ts',
];

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(rel));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(rel);
  }
  return out;
}

export interface Build {
  dir: string;
  /** What was measured: a hash of src/ (first 12 hex digits) and its newest file's mtime. */
  source: { hash: string; newest: string; newestAt: string };
  /** Absolute path of a compiled bench child script. */
  child(script: string): string;
  /** Environment the compiled children need. */
  env: Record<string, string>;
  remove(): void;
}

export function buildChildren(): Build {
  const configFile = ts.readConfigFile(path.join(ROOT, 'tsconfig.json'), (f) => ts.sys.readFile(f));
  const parsed = ts.parseJsonConfigFileContent(configFile.config, ts.sys, ROOT);
  const compilerOptions: ts.CompilerOptions = {
    ...parsed.options,
    declaration: false,
    sourceMap: false,
    inlineSourceMap: false,
    noEmit: false,
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dsp-bench-'));
  const hash = createHash('sha256');
  let newest = { file: '', at: 0 };
  for (const rel of [...walk('src'), ...CHILD_FILES]) {
    const source = fs.readFileSync(path.join(ROOT, rel), 'utf8');
    if (rel.startsWith('src/')) {
      hash.update(`${rel}\0${source}\0`);
      const at = fs.statSync(path.join(ROOT, rel)).mtimeMs;
      if (at > newest.at) newest = { file: rel, at };
    }
    const out = ts.transpileModule(source, { compilerOptions, fileName: path.join(ROOT, rel) });
    const target = path.join(dir, rel.replace(/\.ts$/, '.js'));
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, out.outputText);
  }
  fs.symlinkSync(path.join(ROOT, 'public'), path.join(dir, 'public'));
  return {
    dir,
    source: {
      hash: hash.digest('hex').slice(0, 12),
      newest: newest.file,
      newestAt: new Date(newest.at).toISOString(),
    },
    child: (script) => path.join(dir, 'bench', script.replace(/\.ts$/, '.js')),
    env: { NODE_PATH: path.join(ROOT, 'node_modules') },
    remove: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}
