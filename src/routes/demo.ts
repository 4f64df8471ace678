// routes/demo.ts: GET / serves the demo page and its static assets from public/, with helmet's
// headers for documents.

import path from 'node:path';
import express, { Router } from 'express';
import helmet from 'helmet';

export function demoRouter(): Router {
  const router = Router();
  const root = path.resolve(__dirname, '../../public');
  // Documents get helmet's full set of headers (the API's smaller set is already on the response;
  // these replace or add to it).
  router.use(helmet(), express.static(root, { index: 'index.html', maxAge: '5m' }));
  return router;
}
