// routes/health.ts: /healthz (the process is alive) and /readyz (ready to take streams: not
// draining, the journal (Redis, when configured) reachable).

import { Router } from 'express';
import type { JournalStore } from '../journal/types';
import { methodNotAllowed } from '../middleware/errors';
import type { ChatService } from '../service';

/**
 * How long /readyz waits for the journal's ping. A Redis that accepts connections and never
 * answers (or drops SYNs: ioredis then waits out its connect timeout, about 30 s in all) would
 * otherwise hold every probe open, each with a ping queued, instead of answering 503.
 */
export const READY_PING_TIMEOUT_MS = 2000;

export function healthRouter(
  service: ChatService,
  journal: JournalStore,
  pingTimeoutMs = READY_PING_TIMEOUT_MS,
): Router {
  const router = Router();
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  router.get('/readyz', async (_req, res) => {
    if (service.draining) {
      res.status(503).json({ status: 'draining' });
      return;
    }
    if (!(await pingWithin(journal, pingTimeoutMs))) {
      res.status(503).json({ status: 'journal unreachable' });
      return;
    }
    res.json({ status: 'ready', activeStreams: service.active.size });
  });
  router.all(['/healthz', '/readyz'], methodNotAllowed(['GET', 'HEAD']));
  return router;
}

async function pingWithin(journal: JournalStore, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
    timer.unref();
  });
  try {
    return await Promise.race([journal.ping(), late]);
  } finally {
    clearTimeout(timer);
  }
}
