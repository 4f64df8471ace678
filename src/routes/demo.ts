// routes/demo.ts: GET / serves the demo page and its static assets from public/.

import path from 'node:path';
import express, { Router } from 'express';

export function demoRouter(): Router {
  const router = Router();
  const root = path.resolve(__dirname, '../../public');
  router.use(express.static(root, { index: 'index.html', maxAge: '5m' }));
  return router;
}
