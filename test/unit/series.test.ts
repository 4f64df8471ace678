// series(): several middleware functions as one router layer, with Express's own semantics for
// next(err), throws and rejected promises.

import express, { type RequestHandler } from 'express';
import request from 'supertest';
import { series } from '../../src/middleware/series';

function appWith(handlers: RequestHandler[]) {
  const app = express();
  app.use(series(handlers));
  app.get('/x', (_req, res) => {
    res.json({ trail: res.locals.trail ?? [] });
  });
  app.use(
    (err: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
      res.status(500).json({ error: err.message, trail: res.locals.trail ?? [] });
    },
  );
  return app;
}

const mark =
  (name: string): RequestHandler =>
  (_req, res, next) => {
    ((res.locals.trail as string[] | undefined) ?? (res.locals.trail = [])).push(name);
    next();
  };

describe('series()', () => {
  it('runs every handler in order, then the routes after it', async () => {
    const res = await request(appWith([mark('a'), mark('b'), mark('c')])).get('/x');
    expect(res.status).toBe(200);
    expect(res.body.trail).toEqual(['a', 'b', 'c']);
  });

  it('next(err) skips the rest and reaches the error handler', async () => {
    const fail: RequestHandler = (_req, _res, next) => next(new Error('refused'));
    const res = await request(appWith([mark('a'), fail, mark('c')])).get('/x');
    expect(res.status).toBe(500);
    expect(res.body).toEqual({ error: 'refused', trail: ['a'] });
  });

  it('a throw and a rejected promise are errors too', async () => {
    const thrower: RequestHandler = () => {
      throw new Error('thrown');
    };
    const rejecter: RequestHandler = async () => {
      await Promise.resolve();
      throw new Error('rejected');
    };
    const thrown = await request(appWith([mark('a'), thrower, mark('c')])).get('/x');
    expect(thrown.body).toEqual({ error: 'thrown', trail: ['a'] });
    const rejected = await request(appWith([rejecter, mark('b')])).get('/x');
    expect(rejected.body).toEqual({ error: 'rejected', trail: [] });
  });

  it('an async handler that calls next() goes on, and one that answers ends the chain', async () => {
    const later: RequestHandler = async (_req, _res, next) => {
      await new Promise((r) => setImmediate(r));
      next();
    };
    const answer: RequestHandler = (_req, res) => {
      res.status(204).end();
    };
    const on = await request(appWith([later, mark('b')])).get('/x');
    expect(on.body.trail).toEqual(['b']);
    const ended = await request(appWith([mark('a'), answer, mark('c')])).get('/x');
    expect(ended.status).toBe(204);
  });

  it("next('route') is no error to a middleware layer: the rest runs, as with separate layers", async () => {
    const route: RequestHandler = (_req, _res, next) => next('route');
    const res = await request(appWith([mark('a'), route, mark('c')])).get('/x');
    expect(res.status).toBe(200);
    expect(res.body.trail).toEqual(['a', 'c']);
  });

  it('one handler is returned as it is', () => {
    const only = mark('a');
    expect(series([only])).toBe(only);
  });
});
