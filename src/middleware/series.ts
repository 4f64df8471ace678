// middleware/series.ts: several middleware functions as one. Express's router pays for every
// layer it walks on every request (a match object, a params object and a callback per layer,
// plus the walk itself); the middleware every API request passes through runs here as one
// layer instead (docs/BENCHMARKS.md).

import type { NextFunction, Request, RequestHandler, Response } from 'express';

/**
 * Run `handlers` in order, as Express would run them as separate layers: each gets a `next`
 * that runs the one after it; `next(err)` (or a throw, or a rejected promise, as Express 5
 * treats a handler's returned promise) skips the rest and goes to the app's error handling.
 */
export function series(handlers: readonly RequestHandler[]): RequestHandler {
  if (handlers.length === 1) return handlers[0]!;
  return (req: Request, res: Response, next: NextFunction): void => {
    let i = 0;
    const step = (err?: unknown): void => {
      // 'route' skips the rest of a route's handlers; to a middleware layer it means no error.
      if (err && err !== 'route') {
        // An error, or 'router': the app's router knows what to do with it.
        next(err);
        return;
      }
      const handler = handlers[i++];
      if (handler === undefined) {
        next();
        return;
      }
      try {
        const ret = handler(req, res, step) as unknown;
        if (
          ret !== null &&
          typeof ret === 'object' &&
          typeof (ret as Promise<void>).then === 'function'
        ) {
          (ret as Promise<void>).then(undefined, (e: unknown) =>
            next(e || new Error('Rejected promise')),
          );
        }
      } catch (e) {
        next(e);
      }
    };
    step();
  };
}
