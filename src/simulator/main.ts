// simulator/main.ts: `npm run simulator`: the DeepSeek emulator on its own, for front-end
// developers without a key. PORT (default 3001) and SIMULATOR_TOKEN_DELAY_MS (default 30).

import { startSimulator } from './server';

async function main(): Promise<void> {
  const port = Number(process.env.PORT ?? 3001);
  const tokenDelayMs = Number(process.env.SIMULATOR_TOKEN_DELAY_MS ?? 30);
  const sim = await startSimulator({ port, host: process.env.HOST ?? '127.0.0.1', tokenDelayMs });
  process.stdout.write(
    `DeepSeek simulator listening on ${sim.url} (POST /chat/completions, /beta/chat/completions)\n`,
  );
  const stop = () => void sim.close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`simulator: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
