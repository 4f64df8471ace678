// public/app.js: the demo page's client. Streams one answer over EventSource; EventSource
// reconnects by itself after a drop and sends Last-Event-ID, the proxy replays what was missed,
// and events are de-duplicated by sequence number so nothing shows twice.
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

function token(e, into) {
  if (!fresh(e)) return;
  const text = JSON.parse(e.data).content;
  if (!state.firstAt) state.firstAt = performance.now();
  state.tokens++;
  into.append(text);
  showStatus('Streaming…');
}

function finish(label) {
  if (es) es.close();
  es = null;
  state.endedAt = performance.now();
  stopBtn.disabled = true;
  sendBtn.disabled = false;
  showStatus(label);
}

function start(prompt) {
  if (es) es.close();
  answerEl.textContent = '';
  reasoningEl.textContent = '';
  reasoningBox.hidden = true;
  reasoningBox.open = false;
  errorEl.hidden = true;
  state = { lastSeq: 0, tokens: 0, startedAt: performance.now(), firstAt: 0, endedAt: 0 };
  const q = new URLSearchParams({
    format: 'sse',
    prompt,
    model: $('model').value,
    thinking: String($('thinking').checked),
  });
  es = new EventSource('/chat-stream?' + q);
  stopBtn.disabled = false;
  sendBtn.disabled = true;
  showStatus('Waiting for the first token…');

  es.onopen = () => {
    if (state.tokens > 0) showStatus('Streaming…');
  };
  es.onmessage = (e) => token(e, answerEl);
  es.addEventListener('reasoning', (e) => {
    reasoningBox.hidden = false;
    token(e, reasoningEl);
  });
  es.addEventListener('done', (e) => {
    fresh(e);
    finish('Done');
  });
  es.addEventListener('error', (e) => {
    if (e.data) {
      // An error event from the proxy: the stream ended with a failure.
      fresh(e);
      const err = JSON.parse(e.data);
      errorEl.textContent = `${err.code}: ${err.message}`;
      errorEl.hidden = false;
      finish('Failed');
      return;
    }
    if (!es) return;
    if (es.readyState === EventSource.CLOSED) {
      // The proxy refused the request (a JSON error before the stream began) or the stream ended.
      if (state.tokens === 0) {
        errorEl.textContent = 'The request was refused. Check the prompt and the server log.';
        errorEl.hidden = false;
      }
      finish(state.tokens === 0 ? 'Failed' : 'Done');
      return;
    }
    showStatus('Connection lost: reconnecting…');
  });
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
  if (es) finish('Stopped');
});
