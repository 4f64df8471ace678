// routes/health.ts: /healthz (the process is alive) and /readyz (ready to take streams: not
// draining; later also Redis reachable).

import { Router } from 'express';
import type { ChatService } from '../service';

export function healthRouter(service: ChatService): Router {
  const router = Router();
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  router.get('/readyz', (_req, res) => {
    if (service.draining) {
      res.status(503).json({ status: 'draining' });
      return;
    }
    res.json({ status: 'ready', activeStreams: service.active.size });
  });
  return router;
}
