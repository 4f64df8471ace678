// public/app.js: the demo page's client. Streams one answer over EventSource; EventSource
// reconnects by itself after a drop and sends Last-Event-ID, the proxy replays what was missed,
// and events are de-duplicated by sequence number so nothing shows twice. A refused request is
// asked about once more with fetch, because EventSource hides a refusal's status and body.
'use strict';

const $ = (id) => document.getElementById(id);
const form = $('ask');
const promptEl = $('prompt');
const answerEl = $('answer');
const reasoningEl = $('reasoning');
const reasoningBox = $('reasoning-box');
const statusEl = $('status');
const errorEl = $('error');
const stopBtn = $('stop');
const sendBtn = $('send');

let es = null;
let state = null;

function seqOf(e) {
  const id = e.lastEventId || '';
  const n = Number(id.slice(id.lastIndexOf(':') + 1));
  return Number.isFinite(n) ? n : 0;
}

/** True the first time an event's seq is seen (replays after a reconnect repeat none). */
function fresh(e) {
  const seq = seqOf(e);
  if (seq <= state.lastSeq) return false;
  state.lastSeq = seq;
  state.lastId = e.lastEventId;
  return true;
}

function showStatus(label) {
  const s = state;
  const parts = [label];
  if (s && s.firstAt) {
    parts.push(`first token ${Math.round(s.firstAt - s.startedAt)} ms`);
    const secs = ((s.endedAt || performance.now()) - s.firstAt) / 1000;
    if (secs > 0) parts.push(`${(s.tokens / secs).toFixed(1)} tokens/s`);
    parts.push(`${s.tokens} tokens`);
  }
  statusEl.textContent = parts.join(' · ');
}

function showError(text) {
  errorEl.textContent = text;
  errorEl.hidden = false;
}

/** The proxy's error as one plain line: `code: message (retry after N s)`. */
function showProxyError(code, message, retryAfter) {
  let text = `${code}: ${message}`;
  if (retryAfter) text += ` (retry after ${retryAfter}${/^\d+$/.test(retryAfter) ? ' s' : ''})`;
  showError(text);
}

function token(e, into) {
  if (!fresh(e)) return;
  const text = JSON.parse(e.data).content;
  if (!state.firstAt) state.firstAt = performance.now();
  state.tokens++;
  into.append(text);
  showStatus('Streaming…');
}

/** Close the event source and any fetch still open for this answer. */
function teardown() {
  if (es) es.close();
  es = null;
  if (state && state.fetch) state.fetch.abort();
}

function finish(label) {
  teardown();
  state.endedAt = performance.now();
  stopBtn.disabled = true;
  sendBtn.disabled = false;
  showStatus(label);
}

/** Follow the stream at `url`; events from an event source that was replaced are ignored. */
function listen(url) {
  const source = new EventSource(url);
  es = source;
  const live = (handler) => (e) => {
    if (es === source) handler(e);
  };
  source.onopen = live(() => {
    state.opened = true;
    if (state.tokens > 0) showStatus('Streaming…');
  });
  source.onmessage = live((e) => token(e, answerEl));
  source.addEventListener(
    'reasoning',
    live((e) => {
      reasoningBox.hidden = false;
      token(e, reasoningEl);
    }),
  );
  source.addEventListener(
    'done',
    live((e) => {
      fresh(e);
      finish('Done');
    }),
  );
  source.addEventListener(
    'error',
    live((e) => {
      if (e.data) {
        // An error event from the proxy: the stream ended with a failure.
        fresh(e);
        const err = JSON.parse(e.data);
        showProxyError(err.code, err.message);
        finish('Failed');
        return;
      }
      // EventSource gives up on any answer but a 200 stream (a network error only makes it
      // reconnect): the proxy refused the request, or refused a reconnect.
      if (source.readyState === EventSource.CLOSED) void explainRefusal(state);
      else showStatus('Connection lost: reconnecting…');
    }),
  );
}

/** An id for X-Request-ID (crypto.randomUUID needs a secure context; plain-HTTP demos are not). */
function newRequestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return 'demo-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Show why the proxy refused, by asking once more with fetch, which can read the JSON error.
 * The repeat never pays for a second answer: a refused request started nothing upstream, a
 * refused reconnect is repeated with its Last-Event-ID (a resume never calls the upstream), and
 * a new request carries an X-Request-ID of ours, so if it is accepted this time (the rate limit
 * or the overload passed meanwhile) the page follows that very stream instead of dropping it.
 */
async function explainRefusal(s) {
  teardown();
  const resumeFrom = s.lastId;
  if (!resumeFrom && s.opened) {
    // The stream was accepted and goes on in the proxy's journal, but no event came yet: its id
    // is in the SSE preamble, which EventSource keeps to itself. Asking again could only start
    // another answer, so say what happened instead.
    showError('The connection was lost before the first token and the proxy refused to reconnect.');
    finish('Failed');
    return;
  }
  showStatus('Refused: asking the proxy why…');
  const requestId = resumeFrom ? '' : newRequestId();
  s.fetch = new AbortController();
  let res;
  try {
    res = await fetch(s.url, {
      headers: resumeFrom ? { 'Last-Event-ID': resumeFrom } : { 'X-Request-ID': requestId },
      cache: 'no-store',
      signal: s.fetch.signal,
    });
  } catch (err) {
    if (s !== state || s.endedAt) return; // stopped or replaced meanwhile
    showError(`The proxy refused the request and could not be asked why (${err.message}).`);
    finish('Failed');
    return;
  }
  if (s !== state || s.endedAt) return;
  if (res.status === 204) {
    finish('Done'); // every event had been delivered
    return;
  }
  if (res.ok) {
    // Accepted this time. The fetch stays attached (read and thrown away) so the proxy goes on
    // generating for it; the page shows the stream through an event source that resumes it.
    res.body.pipeTo(new WritableStream()).catch(() => undefined);
    // From here on a refusal is asked about as a resume of this stream, never as a new request.
    s.lastId = resumeFrom || `${requestId}:0`;
    listen(`${s.url}&lastEventId=${encodeURIComponent(s.lastId)}`);
    showStatus(s.tokens > 0 ? 'Streaming…' : 'Waiting for the first token…');
    return;
  }
  let err;
  try {
    err = (await res.json()).error;
  } catch {
    err = undefined; // not the proxy's JSON (a reverse proxy's error page, say)
  }
  if (s !== state || s.endedAt) return;
  showProxyError(
    (err && err.code) || `HTTP ${res.status}`,
    (err && err.message) || res.statusText || 'the request was refused',
    res.headers.get('Retry-After'),
  );
  finish('Failed');
}

function start(prompt) {
  teardown();
  answerEl.textContent = '';
  reasoningEl.textContent = '';
  reasoningBox.hidden = true;
  reasoningBox.open = false;
  errorEl.hidden = true;
  const q = new URLSearchParams({
    format: 'sse',
    prompt,
    model: $('model').value,
    thinking: String($('thinking').checked),
  });
  state = {
    url: '/chat-stream?' + q,
    lastSeq: 0,
    lastId: '',
    tokens: 0,
    startedAt: performance.now(),
    firstAt: 0,
    endedAt: 0,
    fetch: null,
    opened: false,
  };
  listen(state.url);
  stopBtn.disabled = false;
  sendBtn.disabled = true;
  showStatus('Waiting for the first token…');
}

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const prompt = promptEl.value.trim();
  if (prompt) start(prompt);
});
promptEl.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && (ev.metaKey || ev.ctrlKey)) form.requestSubmit();
});
stopBtn.addEventListener('click', () => {
  if (state && !state.endedAt) finish('Stopped');
});
