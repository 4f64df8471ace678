// routes/demo.ts: GET / serves the demo page and its static assets from public/, with helmet's
// headers for documents.

import path from 'node:path';
import express, { Router } from 'express';
import helmet from 'helmet';
import { methodNotAllowed } from '../middleware/errors';

export function demoRouter(): Router {
  const router = Router();
  const root = path.resolve(__dirname, '../../public');
  // Documents get helmet's full set of headers (the API's smaller set is already on the response;
  // these replace or add to it).
  router.use(helmet(), express.static(root, { index: 'index.html', maxAge: '5m' }));
  // The page is read-only: other methods on it are 405, not 404 (other paths stay 404).
  router.all('/', methodNotAllowed(['GET', 'HEAD']));
  return router;
}
