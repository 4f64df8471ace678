// stream/deadlines.ts: a time limit of one length for many streams (the upstream idle limit, the
// total limit), kept in one list with one timer. A Node Timeout of its own for each stream and
// limit cost about 200 B for the stream's length (the Timeout, the array of its arguments, its
// boxed numbers) and a limit is one Deadline here (about 56 B). All of a list's deadlines are the
// same length from when they were (re)started, so appending keeps the list in deadline order:
// the timer is set for the first one, and restarting one moves it to the end. The lists are
// per process: a test with fake timers must end the streams it started, or a deadline left
// running keeps its list's timer on the fake clock for the tests after it.

const MAX_DELAY_MS = 2 ** 31 - 1; // setTimeout's; a longer wait fires early and is set again

export class Deadline<T> {
  prev: Deadline<T> | undefined = undefined;
  next: Deadline<T> | undefined = undefined;
  /** When it expires (performance.now()), or -1 when it is not running. */
  at = -1;

  constructor(
    readonly list: Deadlines<T>,
    readonly owner: T,
  ) {}

  /** (Re)start: it expires `list.ms` from now. Once per event-loop turn at most on a hot path. */
  start(): void {
    this.list.start(this);
  }

  stop(): void {
    if (this.at !== -1) this.list.stop(this);
  }
}

export class Deadlines<T> {
  private head: Deadline<T> | undefined = undefined;
  private tail: Deadline<T> | undefined = undefined;
  private timer: NodeJS.Timeout | undefined = undefined;

  readonly ms: number;

  /** `expire` is called with a deadline's owner when it is up (the deadline stopped first). */
  constructor(
    ms: number,
    private readonly expire: (owner: T) => void,
  ) {
    // At least 1 ms: a deadline restarted by its own handler at 0 would expire in the same fire().
    this.ms = Math.max(1, ms);
  }

  start(d: Deadline<T>): void {
    if (d.at !== -1) this.unlink(d);
    const at = performance.now() + this.ms;
    d.at = at;
    let prev = this.tail;
    // Behind the last one, always, unless the clock went back (jest's fake timers start theirs
    // near 0): then in order, and the timer set again if it is now the first.
    while (prev !== undefined && prev.at > at) prev = prev.prev;
    const next = prev === undefined ? this.head : prev.next;
    d.prev = prev;
    d.next = next;
    if (prev === undefined) this.head = d;
    else prev.next = d;
    if (next === undefined) this.tail = d;
    else next.prev = d;
    if (this.head === d && next !== undefined && this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    // The first deadline, not this one: a handler restarting its deadline from fire() (the timer
    // unset) comes before the rest of the list is seen.
    if (this.timer === undefined) this.arm(this.head!.at);
  }

  stop(d: Deadline<T>): void {
    this.unlink(d);
    d.at = -1;
    // Nothing left to wait for. Otherwise the timer stays as it is: set for a deadline that
    // went, it fires early and is set again for the first one still running.
    if (this.head === undefined && this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  /** The timer fired: every deadline that is up expires, in order. */
  fire(): void {
    this.timer = undefined;
    const now = performance.now();
    let threw = false;
    let first: unknown;
    let d: Deadline<T> | undefined;
    while ((d = this.head) !== undefined && d.at <= now) {
      this.stop(d);
      // A throw is a bug in the owner's handler: the others still expire, then it goes on as
      // from a timer of its own.
      try {
        this.expire(d.owner);
      } catch (err) {
        if (!threw) first = err;
        threw = true;
      }
    }
    if (this.head !== undefined && this.timer === undefined) this.arm(this.head.at);
    if (threw) throw first;
  }

  private arm(at: number): void {
    const wait = Math.min(MAX_DELAY_MS, Math.max(1, Math.ceil(at - performance.now())));
    const timer = setTimeout(fireList, wait, this);
    // As the per-stream timers were: a limit alone does not keep the process up.
    timer.unref();
    this.timer = timer;
  }

  private unlink(d: Deadline<T>): void {
    const { prev, next } = d;
    if (prev === undefined) this.head = next;
    else prev.next = next;
    if (next === undefined) this.tail = prev;
    else next.prev = prev;
    d.prev = undefined;
    d.next = undefined;
  }
}

function fireList<T>(list: Deadlines<T>): void {
  list.fire();
}

/**
 * One list per limit length and handler, shared by every stream with those settings (a process
 * normally has one length per limit; tests and the library may have more).
 */
export function deadlinesFor<T>(
  lists: Map<number, Deadlines<T>>,
  ms: number,
  expire: (owner: T) => void,
): Deadlines<T> {
  let list = lists.get(ms);
  if (list === undefined) {
    list = new Deadlines(ms, expire);
    lists.set(ms, list);
  }
  return list;
}
