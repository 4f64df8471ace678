// routes/health.ts: /healthz (the process is alive) and /readyz (ready to take streams: not
// draining, the journal (Redis, when configured) reachable).

import { Router } from 'express';
import type { JournalStore } from '../journal/types';
import { methodNotAllowed } from '../middleware/errors';
import type { ChatService } from '../service';

export function healthRouter(service: ChatService, journal: JournalStore): Router {
  const router = Router();
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  router.get('/readyz', async (_req, res) => {
    if (service.draining) {
      res.status(503).json({ status: 'draining' });
      return;
    }
    if (!(await journal.ping())) {
      res.status(503).json({ status: 'journal unreachable' });
      return;
    }
    res.json({ status: 'ready', activeStreams: service.active.size });
  });
  router.all(['/healthz', '/readyz'], methodNotAllowed(['GET', 'HEAD']));
  return router;
}
