// journal/recorder.ts: between the engine and the client. Numbers every event, appends them to
// the journal once per upstream read, and forwards them to the attached client, if any. When the
// client leaves, generation goes on into the journal for the resume grace period; if nobody has
// come back (in any process) by then, the upstream is aborted.

import type { ProxyError } from '../errors';
import type { ResponseSink } from '../format/response-sink';
import type { StreamListener } from '../stream/chat-stream';
import type { TokenSource, Usage } from '../stream/interpreter';
import { EVENT_OVERHEAD_BYTES, type JournalEvent, type JournalStore } from './types';

export interface RecorderOptions {
  graceMs: number;
  /** Continue numbering after this seq (a stream taken over from another worker). */
  startSeq?: number;
  /** Stop the upstream (nobody is reading and nobody came back). */
  abort: () => void;
}

export class StreamRecorder implements StreamListener {
  private seq = 0;
  /**
   * This turn's events, appended at its end: the first alone, an array from the second on. A
   * slow stream has one event a turn, and an array for it (its store grows to 17 slots on the
   * first push) was made and dropped per token, and held across each turn.
   */
  private first: JournalEvent | undefined = undefined;
  private batch: JournalEvent[] | undefined = undefined;
  private batchBytes = 0;
  private client: ResponseSink | undefined;
  private finished = false;
  private journaling = true;
  private grace: NodeJS.Timeout | undefined;
  private answerStarted = false;

  constructor(
    private readonly store: JournalStore,
    private readonly id: string,
    private readonly opts: RecorderOptions,
  ) {
    this.seq = opts.startSeq ?? 0;
    this.answerStarted = this.seq > 0;
  }

  attach(sink: ResponseSink): void {
    this.client = sink;
  }

  /**
   * The client hung up mid-stream. `resumable` false: nobody can come back for this stream (its
   * id never reached anyone), so the upstream stops at once.
   */
  detach(resumable = true): void {
    this.client = undefined;
    if (this.finished) return;
    if (!resumable || this.opts.graceMs <= 0 || !this.journaling) {
      this.opts.abort();
      return;
    }
    this.armGrace();
  }

  open(): void {
    // The engine flushes with the first tokens (or after a short hold): the head goes with them.
    this.client?.open(true);
  }

  // Hot path: one token. One small object for the journal; the client gets the text directly.
  content(text: string, src?: TokenSource): void {
    const seq = ++this.seq;
    this.answerStarted = true;
    if (this.journaling) this.record({ seq, kind: 'content', data: text });
    this.client?.content(text, seq, src);
  }

  reasoning(text: string, src?: TokenSource): void {
    const seq = ++this.seq;
    if (this.journaling) this.record({ seq, kind: 'reasoning', data: text });
    this.client?.reasoning(text, seq, src);
  }

  flush(): boolean {
    this.flushJournal();
    return this.client ? this.client.flush() : true;
  }

  end(finishReason: string, usage: Usage | undefined): void {
    const data = JSON.stringify({ finish_reason: finishReason, usage: usage ?? null });
    const seq = ++this.seq;
    this.terminal({ seq, kind: 'done', data }, 'done');
    this.client?.done(data, seq);
  }

  fail(err: ProxyError, opened: boolean): void {
    // A stream taken over from another worker began long ago (its events are in the journal):
    // its failure is an event like any other, never "nothing began".
    if (!opened && this.opts.startSeq === undefined) {
      // Nothing began: forget the id so a retry with the same X-Request-ID starts afresh.
      this.finished = true;
      this.clearGrace();
      this.store.remove(this.id);
      this.client?.failBeforeOpen(err);
      return;
    }
    const data = JSON.stringify({ code: err.code, message: err.message, ...err.details });
    const seq = ++this.seq;
    this.terminal({ seq, kind: 'error', data }, 'failed');
    this.client?.error(data, seq);
  }

  /**
   * Shutdown: leave the stream for another worker to continue (a resume there takes it over
   * through prefix completion). Possible when the journal is shared and complete, and the stream
   * is not in the middle of reasoning (reasoning cannot be continued). False: not handed off.
   */
  handoff(): boolean {
    if (this.finished || !this.journaling || !this.store.shared) return false;
    if (this.seq > 0 && !this.answerStarted) return false;
    this.finished = true;
    this.clearGrace();
    this.flushJournal();
    this.store.handoff(this.id);
    return true;
  }

  /** The engine stopped without telling the client (it left and nobody came back). */
  abandoned(): void {
    if (this.finished) return;
    this.finished = true;
    this.flushJournal();
    this.store.finish(this.id, 'failed');
  }

  private record(ev: JournalEvent): void {
    if (this.first === undefined) this.first = ev;
    else if (this.batch === undefined) this.batch = [this.first, ev];
    else this.batch.push(ev);
    this.batchBytes += ev.data.length + EVENT_OVERHEAD_BYTES;
  }

  private flushJournal(): void {
    if (this.first === undefined) return;
    const events = this.batch ?? [this.first];
    const bytes = this.batchBytes;
    this.first = undefined;
    this.batch = undefined;
    this.batchBytes = 0;
    if (!this.store.append(this.id, events, bytes)) {
      // Over the journal budget: the stream can no longer be resumed exactly.
      this.journaling = false;
      if (!this.client) this.opts.abort();
    }
  }

  private terminal(ev: JournalEvent, state: 'done' | 'failed'): void {
    this.finished = true;
    this.clearGrace();
    if (this.journaling) this.record(ev);
    this.flushJournal();
    this.store.finish(this.id, state);
  }

  private armGrace(): void {
    this.grace = setTimeout(() => void this.graceOver(), this.opts.graceMs);
    this.grace.unref();
  }

  /**
   * Nobody attached for a grace period: stop, unless someone follows the journal (a resumed
   * client, in any process); then look again one grace period later, so the upstream stops at
   * most two grace periods after the last reader left.
   */
  private async graceOver(): Promise<void> {
    this.grace = undefined;
    if (this.finished || this.client) return;
    // Unknown (Redis away) counts as followed: a blip must not stop a stream someone reads.
    const followers = await this.store.followers(this.id).catch(() => -1);
    if (this.finished || this.client) return;
    if (followers === 0) this.opts.abort();
    else this.armGrace();
  }

  private clearGrace(): void {
    if (this.grace) clearTimeout(this.grace);
    this.grace = undefined;
  }
}
