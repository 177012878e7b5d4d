// app.js — the Alfred jobs page: sign-in, conversation, live job progress, "while you were away".
// Everything about jobs (submit, watch, resume, dedupe) lives in alfred-client.js; this file only
// renders what the client reports.

import { AlfredApiError, createAlfredClient, emptyView, isTerminal, newId, stepOf } from './alfred-client.js';

const $ = (sel, root = document) => root.querySelector(sel);
const els = {
  accountButton: $('#account-button'),
  accountName: $('#account-name'),
  dialog: $('#account-dialog'),
  accountForm: $('#account-form'),
  devSignin: $('#dev-signin'),
  tokenSignin: $('#token-signin'),
  userName: $('#user-name'),
  apiToken: $('#api-token'),
  accountError: $('#account-error'),
  accountCancel: $('#account-cancel'),
  accountSignout: $('#account-signout'),
  newChat: $('#new-chat'),
  offline: $('#offline-banner'),
  offlineText: $('#offline-text'),
  notice: $('#notice'),
  awayCards: $('#away-cards'),
  conversation: $('#conversation'),
  empty: $('#empty-state'),
  messages: $('#messages'),
  composer: $('#composer'),
  composerNote: $('#composer-note'),
  message: $('#message'),
  live: $('#live'),
  jobTemplate: $('#job-template'),
  notifyPrompt: $('#notify-prompt'),
  notifyYes: $('#notify-yes'),
  notifyNo: $('#notify-no'),
  notifyError: $('#notify-error'),
  chatsButton: $('#chats-button'),
  chatsBadge: $('#chats-badge'),
  chatsDialog: $('#chats-dialog'),
  chatsClose: $('#chats-close'),
  chatsNew: $('#chats-new'),
  chatsList: $('#chats-list'),
  chatsStatus: $('#chats-status'),
  toasts: $('#toasts'),
  whileWorking: $('#while-working'),
  stop: $('#stop'),
};

// ---- configuration -------------------------------------------------------------------
const config = window.ALFRED_CONFIG || {};
const apiBase = (config.apiBase ?? document.querySelector('meta[name="alfred-api-base"]')?.content ?? '')
  .replace(/\/+$/, '');
const AUTH_KEY = 'alfred:auth';
const DEFAULT_USER = config.defaultUser || 'you';
// How many of the user's latest jobs the page reads on load (which conversation, when each recent
// job was sent). A conversation's own jobs are read by themselves (`loadConversationJobs`).
const RECENT_JOBS = Math.min(100, Math.max(1, Number(config.recentJobs) || 100));

/** @type {{mode: 'dev'|'token', user: string, token: string} | null} */
let auth = null;
let client = null;
let conversationId = null;
let draft = null;
let sending = Promise.resolve(); // submits go one after another: the server sees them in the order sent
const lastAnnounced = new Map();
// For "Queued": each job's conversation and its place in submit order (as the server's gate orders
// jobs: created_at, then job id), whether it is active, its last view, and the jobs shown queued.
const jobMeta = new Map();
const activeJobs = new Map();
const lastViews = new Map();
const queuedJobs = new Set();
// Questions: each job's latest job object (for links.input), and a question this page closed itself
// (answered here, or refused as answered elsewhere) before its input_received event arrived.
const jobObjects = new Map();
const closedQuestions = new Map();
let focusWanted = null; // a job opened from a notification: focus its question once it shows
const debug = (window.alfredDebug = { seen: {}, modes: {}, apiBase, activeJobs });

// ---- auth ----------------------------------------------------------------------------
function loadAuth() {
  try { return JSON.parse(localStorage.getItem(AUTH_KEY) || 'null'); } catch { return null; }
}
function saveAuth(a) {
  try { localStorage.setItem(AUTH_KEY, JSON.stringify(a)); } catch { /* ignore */ }
}

/** A token from the dev server, or null when this is not a dev server (deployed). */
async function devToken(user) {
  let res;
  try {
    res = await fetch(`${apiBase}/api/dev/token?user=${encodeURIComponent(user)}`, { cache: 'no-store' });
  } catch {
    throw new AlfredApiError(0, 'network', 'Could not reach Alfred (network error).');
  }
  // 404/405: not a dev server (deployed). 403: a dev server reached from another machine, which
  // mints no tokens for it. Either way, sign in with a token.
  if (res.status === 404 || res.status === 405 || res.status === 403) return null;
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new AlfredApiError(res.status, body?.error?.code || 'error', body?.error?.message || 'sign-in failed');
  return body?.token || null;
}

/** The subject of a JWT, for display and storage scoping only (the server verifies it). */
function tokenSubject(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part)).sub || 'me';
  } catch {
    return 'me';
  }
}

async function signIn() {
  if (config.token) return { mode: 'token', user: tokenSubject(config.token), token: config.token };
  const saved = loadAuth();
  if (saved?.mode === 'token' && saved.token) return saved;
  const user = saved?.user || DEFAULT_USER;
  try {
    const token = await devToken(user);
    if (token) return { mode: 'dev', user, token };
  } catch (err) {
    // Offline at load: keep working with the token we had; the watchers catch up later.
    if (saved?.token) return saved;
    throw err;
  }
  return null; // not a dev server: ask for a token
}

function openAccountDialog(mode) {
  const dev = (mode || auth?.mode || 'dev') === 'dev';
  els.devSignin.hidden = !dev;
  els.tokenSignin.hidden = dev;
  els.userName.required = dev;
  els.userName.value = auth?.mode === 'dev' ? auth.user : '';
  els.apiToken.value = '';
  els.accountError.hidden = true;
  els.accountSignout.hidden = !auth;
  $('#account-save').textContent = dev ? 'Switch' : 'Sign in';
  if (!els.dialog.open) els.dialog.showModal();
  (dev ? els.userName : els.apiToken).focus();
}

els.accountButton.addEventListener('click', () => openAccountDialog());
els.accountCancel.addEventListener('click', () => els.dialog.close());
els.accountSignout.addEventListener('click', async () => {
  await unsubscribePush();
  try { localStorage.removeItem(AUTH_KEY); } catch { /* ignore */ }
  client?.close();
  client = null;
  auth = null;
  resetPage();
  els.accountName.textContent = '…';
  openAccountDialog();
});
els.accountForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  els.accountError.hidden = true;
  try {
    let next;
    if (!els.devSignin.hidden) {
      const user = els.userName.value.trim();
      const token = await devToken(user);
      if (!token) { openAccountDialog('token'); return; }
      next = { mode: 'dev', user, token };
    } else {
      const token = els.apiToken.value.trim();
      if (!token) return;
      next = { mode: 'token', user: tokenSubject(token), token };
    }
    // Another user on this browser: it must stop receiving the previous one's notifications.
    if (auth && next.user !== auth.user) await unsubscribePush();
    // Another user: the URL's conversation is the previous user's.
    if (!auth || next.user !== auth.user) window.history.replaceState(null, '', window.location.pathname);
    saveAuth(next);
    els.dialog.close();
    await start(next);
  } catch (err) {
    els.accountError.textContent = err.message || String(err);
    els.accountError.hidden = false;
  }
});

// ---- notices -------------------------------------------------------------------------
function showNotice(text) {
  els.notice.textContent = text;
  els.notice.hidden = !text;
}

/** A note just above the message box: why the message in it was not sent ('' hides it). */
function showComposerNote(text) {
  els.composerNote.textContent = text;
  els.composerNote.hidden = !text;
}

function updateOnline() {
  const offline = navigator.onLine === false;
  els.offline.hidden = !offline;
  document.body.classList.toggle('is-offline', offline);
  if (!offline) return;
  // One banner: the offline one says it all (no "Reconnecting…" or "Couldn't reach" under it), and
  // it claims Alfred keeps working only when something of yours is under way on the server.
  showNotice('');
  const working = Array.from(activeJobs.values()).some(Boolean);
  const waiting = outbox().length;
  let text = working ? "You're offline — Alfred keeps working; we'll catch up when you're back"
    : "You're offline — we'll catch up when you're back";
  if (waiting) text += `. ${waiting === 1 ? '1 message waits' : `${waiting} messages wait`} to be sent.`;
  els.offlineText.textContent = text;
}
window.addEventListener('online', () => { updateOnline(); showNotice(''); flushOutbox(); });
window.addEventListener('offline', updateOnline);

let quiet = false; // rendering history (ended jobs read back): nothing to announce
function announce(jobId, text) {
  if (!text || lastAnnounced.get(jobId) === text) return;
  lastAnnounced.set(jobId, text);
  if (quiet) return;
  els.live.textContent = text;
}

// ---- conversation rendering ----------------------------------------------------------
function scrollToEnd() {
  els.conversation.scrollTop = els.conversation.scrollHeight;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

/** "You" / "Alfred" for screen readers, and a time shown on demand (tap the message). */
function speaker(li, who) {
  const label = document.createElement('span');
  label.className = 'visually-hidden speaker';
  label.textContent = `${who}: `;
  const time = document.createElement('time');
  time.className = 'msg-time';
  time.hidden = true;
  li.firstElementChild.prepend(label);
  li.append(time);
}

function setTime(li, ms) {
  const time = $('time.msg-time', li);
  if (!time || !ms || Number.isNaN(ms)) return;
  time.dateTime = new Date(ms).toISOString();
  time.textContent = timeFormat.format(new Date(ms));
}

function userBubble(text, jobId) {
  const li = document.createElement('li');
  li.className = 'msg msg-user';
  if (jobId) li.dataset.jobId = jobId;
  const b = document.createElement('div');
  b.className = 'bubble';
  const t = document.createElement('span');
  t.className = 'msg-text';
  t.textContent = text;
  b.append(t);
  li.append(b);
  speaker(li, 'You');
  return li;
}

// ---- simple markdown, built as DOM nodes (never innerHTML): **bold**, lists, line breaks ----
function inline(parent, text) {
  const parts = text.split(/(\*\*[^*\n]+?\*\*)/g);
  for (const part of parts) {
    if (!part) continue;
    if (/^\*\*[^*\n]+?\*\*$/.test(part)) {
      const strong = document.createElement('strong');
      strong.textContent = part.slice(2, -2);
      parent.append(strong);
    } else {
      parent.append(document.createTextNode(part));
    }
  }
}

/** Replace `el`'s children with `text` as paragraphs, bullet and numbered lists, bold, line breaks. */
function renderMarkdown(el, text) {
  const nodes = [];
  let list = null;
  let para = null;
  for (const line of String(text || '').split('\n')) {
    const bullet = /^\s*[-*•]\s+(.*)$/.exec(line);
    const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
    if (bullet || numbered) {
      const tag = bullet ? 'UL' : 'OL';
      if (!list || list.tagName !== tag) { list = document.createElement(tag.toLowerCase()); nodes.push(list); }
      para = null;
      const item = document.createElement('li');
      inline(item, (bullet || numbered)[1]);
      list.append(item);
    } else if (!line.trim()) {
      list = null;
      para = null;
    } else {
      list = null;
      if (para) para.append(document.createElement('br'));
      else { para = document.createElement('p'); nodes.push(para); }
      inline(para, line);
    }
  }
  el.replaceChildren(...nodes);
  el.dataset.source = String(text || '');
}

// ---- one conversation, in the server's order -------------------------------------------
// Each job is a pair of entries (your message, Alfred's bubble) with a place: turns that ended
// (committed, failed, cancelled) by when they were sent; jobs still under way after all of them
// (jobs of a conversation run one at a time in submit order, so an active one comes after every
// committed one) by when they were sent; messages not sent yet (offline) last.
const committedAt = new Map(); // job id → ms of its committed turn (from the conversation)

function createdMs(jobId) {
  const order = metaOf(jobId)?.order;
  if (order) return Date.parse(order.split('#')[0]);
  return committedAt.get(jobId) ?? null;
}

function placeKey(jobId) {
  const active = activeJobs.get(jobId) && !committedAt.has(jobId);
  const t = createdMs(jobId) ?? committedAt.get(jobId) ?? Date.now();
  return [active ? 1 : 0, t, jobId];
}

function before(a, b) {
  for (let i = 0; i < a.length; i += 1) {
    if (a[i] < b[i]) return true;
    if (a[i] > b[i]) return false;
  }
  return false;
}

/** Put a job's two entries where they belong among the others. */
function place(jobId) {
  const entries = Array.from(els.messages.querySelectorAll(`li[data-job-id="${CSS.escape(jobId)}"]`));
  if (!entries.length) return;
  const key = placeKey(jobId);
  const sig = key.join('|');
  if (entries[0].dataset.place === sig && entries.every((e) => e.parentNode === els.messages)) return;
  for (const e of entries) e.dataset.place = sig;
  let anchor = null;
  const seen = new Set([jobId]);
  for (const li of els.messages.children) {
    if (li.dataset.outbox) { anchor = li; break; }
    const other = li.dataset.jobId;
    if (!other || seen.has(other)) continue;
    seen.add(other);
    if (before(key, placeKey(other))) { anchor = li; break; }
  }
  for (const e of entries) els.messages.insertBefore(e, anchor);
}

/** Whether a job belongs on the page: the conversation shown (or one asked for explicitly). */
function shownHere(jobId) {
  const conv = metaOf(jobId)?.conversation || jobObjects.get(jobId)?.conversation_id
    || client.record(jobId)?.conversationId;
  return !conv || conv === conversationId || pinned.has(jobId);
}
const pinned = new Set(); // jobs opened from a notification, shown whatever the conversation

function messageOf(jobId) {
  return client.record(jobId)?.message || jobObjects.get(jobId)?.message || '';
}

/** The Alfred bubble of a job, created (with the user's message above it) if missing. A job of
 * another conversation gets a bubble that is not on the page (it is still watched). */
function jobEntry(jobId, message) {
  let li = els.messages.querySelector(`li.msg-alfred[data-job-id="${CSS.escape(jobId)}"]`)
    || detached.get(jobId);
  if (li) {
    const user = els.messages.querySelector(`li.msg-user[data-job-id="${CSS.escape(jobId)}"]`);
    const text = message || messageOf(jobId);
    if (user && text && !$('.msg-text', user).textContent) $('.msg-text', user).textContent = text;
    return li;
  }
  const user = userBubble(message || messageOf(jobId), jobId);
  li = els.jobTemplate.content.firstElementChild.cloneNode(true);
  li.dataset.jobId = jobId;
  speaker(li, 'Alfred');
  $('.cancel', li).addEventListener('click', () => cancel(jobId, li));
  $('.retry', li).addEventListener('click', () => retryJob(jobId, li));
  $('.steps-summary', li).addEventListener('click', () => { $('.steps-box', li).dataset.touched = '1'; });
  wireTimeline(jobId, li);
  $('.question-form', li).addEventListener('submit', (e) => {
    e.preventDefault();
    const q = lastViews.get(jobId)?.question;
    if (q) answerQuestion(jobId, q, $('.question-input', li).value);
  });
  li.user = user;
  if (shownHere(jobId)) {
    els.empty.hidden = true;
    els.messages.append(user, li);
    place(jobId);
    scrollToEnd();
  } else {
    detached.set(jobId, li);
  }
  return li;
}
const detached = new Map(); // bubbles of jobs of other conversations

// Tap a message: its time, on demand.
els.messages.addEventListener('click', (e) => {
  if (e.target.closest('button, a, input, summary, details, form')) return;
  const li = e.target.closest('li.msg');
  const time = li && $('time.msg-time', li);
  if (time && time.textContent) time.hidden = !time.hidden;
});

// ---- queued: sent while an earlier message of the conversation is still being worked on ----
/** Remember a job's conversation and creation time (ISO, from the server's job object). */
function noteJob(jobId, conversation, createdAt) {
  if (!conversation) return;
  const prev = jobMeta.get(jobId);
  jobMeta.set(jobId, { conversation, order: createdAt ? `${createdAt}#${jobId}` : prev?.order ?? null });
}

function metaOf(jobId) {
  const known = jobMeta.get(jobId);
  if (known?.order) return known;
  const rec = client.record(jobId);
  const conversation = known?.conversation || rec?.conversationId;
  if (!conversation || !rec?.createdAt) return null;
  return { conversation, order: `${new Date(rec.createdAt).toISOString()}#${jobId}` };
}

/** True when an earlier job of the same conversation is still active: this one waits for it. */
function behindAnother(jobId) {
  const me = metaOf(jobId);
  if (!me) return false;
  for (const [other, active] of activeJobs) {
    if (other === jobId || !active) continue;
    const m = metaOf(other);
    if (m && m.conversation === me.conversation && m.order < me.order) return true;
  }
  return false;
}

/** Show jobs of this conversation that have not started again: one ahead of them began or ended. */
function refreshWaiting(jobId) {
  const conversation = metaOf(jobId)?.conversation;
  if (!conversation) return;
  for (const [other, v] of lastViews) {
    if (other !== jobId && v.status === 'pending' && !v.lastSeq && metaOf(other)?.conversation === conversation) {
      render(other, v);
    }
  }
}

function render(jobId, view) {
  const li = jobEntry(jobId, client.record(jobId)?.message);
  const active = !isTerminal(view.status);
  const wasActive = activeJobs.get(jobId);
  activeJobs.set(jobId, active);
  lastViews.set(jobId, view);
  if (wasActive !== active && li.parentNode) place(jobId);
  if (li.user) setTime(li.user, createdMs(jobId));
  setTime(li, committedAt.get(jobId));
  if (wasActive !== active && navigator.onLine === false) updateOnline();
  li.classList.toggle('is-active', active);
  for (const s of ['complete', 'failed', 'cancelled']) li.classList.toggle(`is-${s}`, view.status === s);

  // Queued: not started, behind an earlier job of the conversation. It stays "Queued" until its
  // own first event (it runs), even in the moment between the earlier job's end and its start.
  const notStarted = active && view.status === 'pending' && !view.lastSeq;
  if (!notStarted) queuedJobs.delete(jobId);
  else if (behindAnother(jobId)) queuedJobs.add(jobId);
  const queued = notStarted && queuedJobs.has(jobId);
  li.classList.toggle('is-queued', queued);
  els.messages.querySelector(`li.msg-user[data-job-id="${CSS.escape(jobId)}"]`)?.classList.toggle('is-queued', queued);
  $('.working-title', li).hidden = queued;
  $('.queued', li).hidden = !queued;
  $('.bar', li).hidden = queued;
  $('.step-line', li).hidden = queued;

  const working = $('.working', li);
  working.hidden = !active;
  const waiting = active && view.status === 'waiting';
  li.classList.toggle('is-waiting', waiting);
  $('.working-text', li).textContent = waiting ? 'Waiting for your answer' : 'Alfred is still working...';
  const so = stepOf(view);
  let stepText;
  let stepLabel = '';
  if (waiting) {
    // The title already reads "Waiting for your answer": the step line says where he paused (once).
    stepText = so ? `Paused at step ${so.k} of ${so.n}` : 'Paused before his first step';
    if (so) stepLabel = view.steps.find((s) => s.index === so.k)?.label || '';
  } else if (view.phase === 'reply') {
    stepText = 'Writing the reply';
  } else if (so) {
    stepText = `Step ${so.k} of ${so.n}`;
    stepLabel = view.steps.find((s) => s.index === so.k)?.label || '';
  } else if (view.status === 'pending' && !view.lastSeq) {
    stepText = 'Waiting for a free worker…';
  } else {
    stepText = 'Thinking…';
  }
  $('.step-text', li).textContent = stepText;
  $('.step-label', li).textContent = stepLabel ? `— ${stepLabel}` : '';
  const total = view.totalSteps || 0;
  // A running step counts half, so the bar moves when a step starts, not only when it ends.
  const running = view.currentStep != null ? 0.5 : 0;
  const fraction = view.phase === 'reply' ? 1 : total ? (view.completedSteps + running) / total : 0;
  const bar = $('.bar', li);
  bar.setAttribute('aria-valuemax', String(total || 1));
  bar.setAttribute('aria-valuenow', String(view.phase === 'reply' ? total || 1 : view.completedSteps));
  bar.setAttribute('aria-valuetext', stepLabel ? `${stepText}: ${stepLabel}` : stepText);
  $('.bar-fill', li).style.width = `${Math.round(Math.max(0.04, fraction) * 100)}%`;

  const retry = $('.retry-note', li);
  if (view.retry && active) {
    const msg = view.retry.error?.message || '';
    const why = msg ? `${msg.charAt(0).toUpperCase()}${msg.slice(1)} — t` : 'T';
    retry.textContent = `${why}rying again (attempt ${view.attempt + 1})…`;
    retry.hidden = false;
  } else {
    retry.hidden = true;
  }

  const reply = $('.reply', li);
  if (reply.dataset.source !== (view.reply || '')) renderMarkdown(reply, view.reply || '');
  reply.hidden = !view.reply || (view.status === 'cancelled' && !view.stopped);

  const failed = $('.state-failed', li);
  failed.hidden = view.status !== 'failed';
  if (view.status === 'failed') failed.textContent = `Alfred couldn't finish: ${view.error?.message || 'something went wrong'}`;
  const retryBtn = $('.retry', li);
  retryBtn.hidden = view.status !== 'failed' || !messageOf(jobId);
  const interrupted = view.status === 'cancelled' && view.cancelReason === 'interrupted';
  li.classList.toggle('is-interrupted', interrupted);
  $('.state-cancelled', li).hidden = view.status !== 'cancelled' || interrupted || Boolean(view.stopped);
  $('.state-interrupted', li).hidden = !interrupted;
  renderStopped(li, view);

  // The plan, each step once, with its state.
  const box = $('.steps-box', li);
  box.hidden = !view.steps.length;
  // Closed unless tapped: the step line already says where Alfred is (8–20 rows per job would
  // fill the screen).
  if (!box.dataset.touched) box.open = false;
  $('.steps-summary', li).textContent = active ? `Steps (${view.completedSteps} of ${total} done)`
    : `${view.completedSteps} of ${total} steps done`;
  const list = $('.steps', li);
  const want = view.steps.map((s) => s.index).join(',');
  if (list.dataset.indexes !== want) {
    list.replaceChildren(...view.steps.map((s) => {
      const item = document.createElement('li');
      item.className = 'step';
      item.dataset.index = String(s.index);
      item.append(Object.assign(document.createElement('span'), { className: 'step-icon', ariaHidden: 'true' }),
        Object.assign(document.createElement('span'), { className: 'step-name', textContent: s.label }),
        Object.assign(document.createElement('span'), { className: 'visually-hidden step-state' }));
      return item;
    }));
    list.dataset.indexes = want;
  }
  for (const s of view.steps) {
    const item = list.querySelector(`li[data-index="${s.index}"]`);
    const status = s.status === 'completed' ? 'done'
      : (s.status === 'started' && active) ? 'running' : 'todo';
    item.dataset.state = status;
    $('.step-state', item).textContent = { done: ' (done)', running: ' (in progress)', todo: '' }[status];
  }
  offerTimeline(li, view);

  renderQuestion(jobId, li, view, active);
  renderSteers(jobId, li, view);
  $('.steer-note', li).hidden = !steerMissed.has(jobId);

  if (queued) announce(jobId, 'Queued: starts when Alfred has finished your earlier message.');
  else if (waiting && view.question) announce(jobId, `Alfred asks: ${view.question.prompt}`);
  else if (active) announce(jobId, stepLabel ? `${stepText}: ${stepLabel}` : stepText);
  else if (view.status === 'complete') announce(jobId, 'Alfred finished.');
  else if (view.status === 'failed') announce(jobId, `Alfred couldn't finish: ${view.error?.message || ''}`);
  else if (interrupted) announce(jobId, 'Interrupted by your next message.');
  else if (view.status === 'cancelled') announce(jobId, 'Cancelled.');

  if (wasActive !== active) {
    refreshWaiting(jobId);
    refreshComposer();
  }
}

// ---- Stop keeps the words: a reply cut off by a cancel stays, marked "Stopped" --------------

/** The view of a committed turn: its reply, and a stopped one (cancelled while replying) as such. */
function committedView(jobId, turn) {
  const view = {
    ...emptyView(jobId, turn.stopped ? 'cancelled' : 'complete'), reply: turn.assistant || '', fromTurns: true,
    steers: (turn.steers || []).map((text) => ({ messageId: null, text })),
  };
  return turn.stopped ? { ...view, stopped: true } : view;
}

function renderStopped(li, view) {
  const stopped = view.status === 'cancelled' && Boolean(view.stopped);
  li.classList.toggle('is-stopped', stopped);
  $('.state-stopped', li).hidden = !stopped;
}

// ---- the timeline: the job's "Steps" details, fetched from its log when opened -------------

const SPAN_NAMES = { queued: 'Queued', think: 'Thinking', waiting: 'Waiting for you', backoff: 'Retry wait',
  reply: 'Reply' };
const ENDED = { completed: 'finished', crashed: 'its worker stopped; picked up again', handed_on: 'handed on',
  fenced: 'ended under it', waiting: 'asked you, then waited', cancelled: 'cancelled', failed: 'failed' };

function seconds(s) {
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(Math.round(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

function tokenText(u) {
  if (!u || !(u.input_tokens || u.output_tokens)) return '';
  const parts = [`${u.input_tokens.toLocaleString('en-US')} in`, `${u.output_tokens.toLocaleString('en-US')} out`];
  if (u.cache_read_tokens) parts.push(`${u.cache_read_tokens.toLocaleString('en-US')} cached`);
  return `${parts.join(' · ')} tokens`;
}

function usd(cost) {
  return cost == null ? '' : cost < 0.01 ? `$${cost.toFixed(4)}` : `$${cost.toFixed(2)}`;
}

function el(tag, className, text) {
  return Object.assign(document.createElement(tag), { className, ...(text != null ? { textContent: text } : {}) });
}

/** An ended job whose plan this device never saw (a turn from the conversation, a job cancelled
 * before it planned) still has a timeline: offer it under its own name. */
function offerTimeline(li, view) {
  if (view.steps.length || !isTerminal(view.status)) return;
  $('.steps-box', li).hidden = false;
  $('.steps-summary', li).textContent = 'Timeline';
}

/** Fetch the timeline each time the details open (a running job's grows), once it has ended. */
function wireTimeline(jobId, li) {
  const box = $('.steps-box', li);
  box.addEventListener('toggle', async () => {
    if (!box.open || !client) return;
    const shown = $('.timeline', li);
    const v = lastViews.get(jobId);
    if (shown.dataset.final === '1') return;
    try {
      const tl = await client.getTimeline(jobId);
      renderTimeline(li, tl);
      if (isTerminal(tl.status) && v && isTerminal(v.status)) shown.dataset.final = '1';
    } catch { /* offline, or gone: the step list stays */ }
  });
}

/** Draw the timeline: one row per span, its bar placed and sized on the job's wall time. */
function renderTimeline(li, tl) {
  const box = $('.timeline', li);
  const wall = Math.max(tl.totals.wall_s, 0.001);
  const t0 = tl.spans.length ? Date.parse(tl.spans[0].started_at) : 0;
  const many = tl.attempts.length > 1;
  const rows = tl.spans.map((span) => {
    const row = el('li', `tl-row tl-${span.kind}`);
    const name = span.kind === 'step' ? `Step ${span.index}${span.label ? ` · ${span.label}` : ''}`
      : SPAN_NAMES[span.kind] || span.kind;
    const head = el('div', 'tl-head');
    head.append(el('span', 'tl-name', many ? `${name} (attempt ${span.attempt})` : name),
      el('span', 'tl-dur', span.ended_at ? seconds(span.duration_s) : `${seconds(span.duration_s)} so far`));
    const track = el('div', 'tl-track');
    const bar = el('span', 'tl-bar');
    const left = Math.min(99, ((Date.parse(span.started_at) - t0) / 1000 / wall) * 100);
    bar.style.left = `${left.toFixed(2)}%`;
    bar.style.width = `${Math.max(1, Math.min(100 - left, (span.duration_s / wall) * 100)).toFixed(2)}%`;
    track.setAttribute('aria-hidden', 'true');
    track.append(bar);
    row.append(head, track);
    const meta = [tokenText(span.usage), usd(span.cost_usd)].filter(Boolean).join(' · ');
    if (meta) row.append(el('div', 'tl-meta', meta));
    return row;
  });
  const list = el('ol', 'tl-spans');
  list.append(...rows);
  const parts = [];
  if (many || tl.attempts.some((a) => a.ended && a.ended !== 'completed' && a.ended !== 'cancelled')) {
    const attempts = el('ul', 'tl-attempts');
    attempts.append(...tl.attempts.map((a) => el('li', `tl-attempt tl-ended-${a.ended || 'running'}`,
      `Attempt ${a.attempt}: ${a.ended ? ENDED[a.ended] || a.ended : 'running'}`)));
    parts.push(attempts);
  }
  parts.push(list);
  if (tl.cancel) {
    parts.push(el('p', 'tl-cancel', tl.cancel.reason === 'interrupted' ? 'Cancelled: interrupted by your next message'
      : 'Cancelled: you stopped it'));
  }
  const t = tl.totals;
  const sum = [`${seconds(t.wall_s)} in all`];
  if (t.queued_s >= 0.05) sum.push(`${seconds(t.queued_s)} queued`);
  if (t.waiting_s >= 0.05) sum.push(`${seconds(t.waiting_s)} waiting for you`);
  const tok = tokenText(t.usage);
  if (tok) sum.push(tok, usd(t.cost_usd));
  parts.push(el('p', 'tl-totals', sum.join(' · ')));
  box.replaceChildren(...parts);
  box.hidden = false;
  $('.steps', li).hidden = true; // the timeline says all the list did, and when
}

// ---- questions: Alfred asks mid-run and waits for the answer ------------------------------
const ANSWERED_KEY = () => `alfred:${auth.user}:answered`;

/** Questions answered from this device (kept across reloads, to tell "you" from "another device"). */
function answeredHere() {
  try { return JSON.parse(localStorage.getItem(ANSWERED_KEY()) || '[]'); } catch { return []; }
}
function rememberAnswered(jobId, inputId) {
  const list = answeredHere().filter((k) => k !== `${jobId}#${inputId}`).concat(`${jobId}#${inputId}`).slice(-50);
  try { localStorage.setItem(ANSWERED_KEY(), JSON.stringify(list)); } catch { /* best effort */ }
}

function answerText(answer) {
  if (answer === true) return 'Yes';
  if (answer === false) return 'No';
  return String(answer);
}

/** The question card of a job's bubble: built from its input_required event, gone once answered. */
function renderQuestion(jobId, li, view, active) {
  const box = $('.question', li);
  const q = active ? view.question : null;
  const closed = q ? closedQuestions.get(jobId) : null;
  const open = Boolean(q) && !(closed && closed.inputId === q.inputId);
  const arrived = q && box.dataset.inputId !== q.inputId;
  if (arrived) buildQuestion(jobId, box, q);
  if (!q) delete box.dataset.inputId;
  box.hidden = !open;
  li.classList.toggle('has-question', open);
  if (arrived && open && li.parentNode) bringIntoView(box);
  if (open && focusWanted === jobId) {
    focusWanted = null;
    box.querySelector('button:not([disabled]), input:not([disabled])')?.focus({ preventScroll: true });
  }

  const note = $('.answer-note', li);
  let text = '';
  if (closed && q && closed.inputId === q.inputId) {
    text = closed.text;
  } else if (view.answered) {
    const a = view.answered;
    const who = answeredHere().includes(`${jobId}#${a.inputId}`) ? 'You answered' : 'Answered on another device';
    text = `${a.prompt ? `${a.prompt} — ` : ''}${who}: ${answerText(a.answer)}.`;
  }
  note.textContent = text;
  note.hidden = !text;
}

function buildQuestion(jobId, box, q) {
  box.dataset.inputId = q.inputId;
  $('.question-prompt', box).textContent = q.prompt;
  $('.question-error', box).hidden = true;
  const form = $('.question-form', box);
  const choices = $('.question-choices', box);
  form.hidden = q.kind !== 'text';
  $('.question-input', box).value = '';
  const opts = q.kind === 'confirm' ? [['Yes', true], ['No', false]]
    : q.kind === 'choice' ? (q.options || []).map((o) => [o, o]) : [];
  choices.replaceChildren(...opts.map(([label, value], i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = q.kind === 'confirm' && i === 1 ? 'secondary answer' : 'answer';
    b.textContent = label;
    b.addEventListener('click', () => answerQuestion(jobId, q, value));
    return b;
  }));
  for (const c of box.querySelectorAll('button, input')) c.disabled = false;
}

const CLOSED_BY_SERVER = {
  input_answered: 'This question was answered on another device.',
  stale_input: 'This question was already answered.',
  input_expired: 'This question expired before it was answered.',
  job_finished: 'Alfred has already finished this one.',
};

async function answerQuestion(jobId, q, value) {
  const li = jobEntry(jobId);
  const box = $('.question', li);
  const error = $('.question-error', box);
  if (box.dataset.inputId !== q.inputId) return;
  if (q.kind === 'text' && !String(value).trim()) {
    error.textContent = 'Type your answer first.';
    error.hidden = false;
    return;
  }
  const controls = box.querySelectorAll('button, input');
  for (const c of controls) c.disabled = true;
  error.hidden = true;
  const answer = q.kind === 'text' ? String(value).trim() : value;
  try {
    await client.answerInput(jobObjects.get(jobId) || jobId, q.inputId, answer);
    rememberAnswered(jobId, q.inputId);
    closedQuestions.set(jobId, { inputId: q.inputId, text: `You answered: ${answerText(answer)}. Alfred goes on…` });
  } catch (err) {
    if (err instanceof AlfredApiError && err.status === 409) {
      closedQuestions.set(jobId, { inputId: q.inputId, text: CLOSED_BY_SERVER[err.code] || err.message });
    } else {
      if (err instanceof AlfredApiError && err.status === 401) openAccountDialog();
      for (const c of controls) c.disabled = false;
      error.textContent = err instanceof AlfredApiError && err.status === 0
        ? "Couldn't reach Alfred: your answer was not sent. Try again."
        : `Couldn't send your answer: ${err.message}`;
      error.hidden = false;
      return;
    }
  }
  const view = lastViews.get(jobId);
  if (view) render(jobId, view);
  announce(jobId, closedQuestions.get(jobId).text);
}

/** Bring a job's bubble into view (a notification was tapped, or the page opened on #job=ID). */
async function openJob(jobId) {
  if (!jobId || !client) return;
  pinned.add(jobId);
  attach(jobId);
  let li = els.messages.querySelector(`li.msg-alfred[data-job-id="${CSS.escape(jobId)}"]`);
  if (!li) {
    try {
      const job = await client.getJob(jobId);
      jobObjects.set(jobId, job);
      li = jobEntry(jobId, job.message);
      watch(job);
    } catch { return; }
  }
  stick = false; // the user asked for this job: stay on it
  li.scrollIntoView({ block: 'center' });
  li.classList.add('is-opened');
  setTimeout(() => li.classList.remove('is-opened'), 2000);
  const first = li.querySelector('.question:not([hidden]) button:not([disabled]), .question:not([hidden]) input');
  if (first) first.focus({ preventScroll: true });
  else focusWanted = jobId; // its question may be on its way (the events are being read again)
}

/** Put a job kept off the page (another conversation) on it. */
function attach(jobId) {
  const li = detached.get(jobId);
  if (!li) return;
  detached.delete(jobId);
  els.empty.hidden = true;
  els.messages.append(li.user, ...(li.steerBubbles || []), li);
  place(jobId);
}

function jobFromHash() {
  const m = /^#job=([0-9A-Za-z_-]{1,64})$/.exec(window.location.hash);
  return m ? m[1] : null;
}
window.addEventListener('hashchange', () => openJob(jobFromHash()));

// ---- notifications: a service worker shows Web Push messages -----------------------------
const pushSupported = () => 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
let pushKey; // undefined: not asked yet; null: the server sends no pushes (404); else the VAPID key
let swRegistration = null;
const NOTIFY_KEY = () => `alfred:${auth.user}:notify-prompt`;
const NOT_NOW_MS = 7 * 24 * 3600 * 1000;

function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker.register('sw.js').then((reg) => { swRegistration = reg; }).catch(() => {});
  navigator.serviceWorker.addEventListener('message', (e) => {
    if (e.data?.type === 'alfred:open-job') openJob(e.data.jobId);
  });
  navigator.serviceWorker.startMessages?.();
}

function base64UrlBytes(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '=');
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

async function knownPushKey() {
  if (pushKey === undefined) pushKey = await client.getPushKey();
  return pushKey;
}

/** Subscribe this browser (or renew its subscription) and give it to the server. */
async function subscribePush() {
  const key = await knownPushKey();
  if (!key) return false;
  const reg = swRegistration || await navigator.serviceWorker.ready;
  let sub = await reg.pushManager.getSubscription();
  const want = base64UrlBytes(key);
  const have = sub?.options?.applicationServerKey ? new Uint8Array(sub.options.applicationServerKey) : null;
  if (sub && have && (have.length !== want.length || have.some((b, i) => b !== want[i]))) {
    await sub.unsubscribe(); // made with another server key: it could not be used
    sub = null;
  }
  sub ||= await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: want });
  await client.savePushSubscription(sub);
  return true;
}

/** Signing out or switching user: this browser's subscription leaves the user (the server forgets
 * it, and the browser drops it, so its push service refuses whatever still comes for it). Whoever
 * signs in next on a shared device must never see the previous user's notifications. */
async function unsubscribePush() {
  if (!pushSupported() || !client) return;
  try {
    const reg = swRegistration || await navigator.serviceWorker.getRegistration();
    const sub = await reg?.pushManager.getSubscription();
    if (!sub) return;
    try {
      await client.deletePushSubscription(sub.endpoint);
    } catch { /* offline: the browser's unsubscribe below ends it at the push service anyway */ }
    await sub.unsubscribe();
  } catch { /* no service worker: nothing was subscribed */ }
}

function hideNotifyPrompt() {
  els.notifyPrompt.hidden = true;
  els.notifyError.hidden = true;
}

/** After a message was sent: offer notifications, once, if the browser and the server can. */
async function offerNotifications() {
  if (!pushSupported() || Notification.permission !== 'default' || !els.notifyPrompt.hidden) return;
  const notNow = Number(localStorage.getItem(NOTIFY_KEY()) || 0);
  if (notNow && Date.now() - notNow < NOT_NOW_MS) return;
  try {
    if (!(await knownPushKey())) return; // 404 push_disabled: nothing to offer
  } catch { return; }
  els.notifyError.hidden = true;
  els.notifyYes.disabled = false;
  els.notifyPrompt.hidden = false;
}

els.notifyNo.addEventListener('click', () => {
  try { localStorage.setItem(NOTIFY_KEY(), String(Date.now())); } catch { /* ignore */ }
  hideNotifyPrompt();
});
els.notifyYes.addEventListener('click', async () => {
  els.notifyYes.disabled = true;
  try {
    const permission = await Notification.requestPermission();
    if (permission !== 'granted') {
      hideNotifyPrompt();
      showNotice("Notifications are off. You can turn them on in your browser's site settings.");
      return;
    }
    await subscribePush();
    hideNotifyPrompt();
    showNotice("Notifications are on: we'll tell you when Alfred finishes or needs your answer.");
  } catch (err) {
    els.notifyYes.disabled = false;
    els.notifyError.textContent = `Couldn't turn on notifications: ${err.message || err}`;
    els.notifyError.hidden = false;
  }
});

async function cancel(jobId, li) {
  const btn = $('.cancel', li);
  btn.disabled = true;
  btn.textContent = 'Cancelling…';
  try {
    await client.cancelJob(jobId);
  } catch (err) {
    btn.disabled = false;
    btn.textContent = 'Cancel';
    showNotice(`Couldn't cancel: ${err.message}`);
  }
}

// ---- "finished while you were away" ----------------------------------------------------
function showAwayCard(jobId) {
  if (document.querySelector(`.away-card[data-job-id="${CSS.escape(jobId)}"]`)) return;
  const rec = client.record(jobId);
  const view = rec?.view;
  if (!view) return;
  // It sits in the bubble it is about (whose reply or error is right under it), not above the
  // conversation; only a job of another conversation gets a card up top, with what it said.
  const bubble = jobEntry(jobId, rec.message);
  const inPlace = bubble.parentNode === els.messages;
  const card = document.createElement(inPlace ? 'section' : 'article');
  card.className = `away-card away-${view.status}`;
  card.dataset.jobId = jobId;
  const title = document.createElement(inPlace ? 'h3' : 'h2');
  const icon = document.createElement('span');
  icon.className = 'away-icon';
  icon.setAttribute('aria-hidden', 'true');
  let heading;
  if (view.status === 'complete') heading = 'Alfred finished while you were away';
  else if (view.status === 'failed') heading = "Alfred couldn't finish while you were away";
  else {
    heading = view.cancelReason === 'interrupted' ? 'Interrupted by your next message while you were away'
      : 'Cancelled while you were away';
  }
  title.append(icon, heading);
  const ok = document.createElement('button');
  ok.type = 'button';
  ok.className = 'secondary';
  ok.textContent = 'Got it';
  ok.addEventListener('click', () => {
    client.acknowledge(jobId);
    card.remove();
    if (bubble.parentNode) bubble.scrollIntoView({ block: 'nearest' });
    els.message.focus({ preventScroll: true });
  });
  card.setAttribute('aria-labelledby', (title.id = `away-${jobId}`));
  card.append(title);
  if (!inPlace) {
    const body = document.createElement('blockquote');
    body.textContent = view.status === 'complete' ? view.reply
      : view.status === 'failed' ? view.error?.message || 'Something went wrong.' : rec.message || '';
    card.append(body);
  }
  card.append(ok);
  if (inPlace) {
    $('.bubble', bubble).prepend(card);
    bubble.scrollIntoView({ block: 'nearest' });
  } else {
    els.awayCards.append(card);
  }
  announce(jobId, heading);
}

// ---- watching --------------------------------------------------------------------------
function handlersFor(jobId) {
  return {
    onJob(job) {
      jobObjects.set(jobId, job);
      noteJob(jobId, job.conversation_id, job.created_at);
    },
    onEvent(ev) {
      (debug.seen[jobId] ||= []).push(ev.seq);
    },
    onUpdate(view) {
      render(jobId, view);
    },
    onDone(view, { whileAway }) {
      render(jobId, view);
      if (whileAway) showAwayCard(jobId);
      else if (!shownHere(jobId)) showElsewhereToast(jobId, view);
    },
    onGone() {
      // 404: expired, or the local stack was restarted and forgot it. Stop spinning and say so.
      const li = jobEntry(jobId);
      activeJobs.set(jobId, false);
      li.classList.remove('is-active', 'is-queued');
      li.classList.add('is-gone');
      $('.working', li).hidden = true;
      $('.state-gone', li).hidden = false;
      if (li.parentNode) place(jobId);
      refreshWaiting(jobId);
      if (navigator.onLine === false) updateOnline();
    },
    onConnection(state, { mode }) {
      if (state === 'live') (debug.modes[jobId] ||= []).push(mode);
      const anyTrouble = state === 'reconnecting' && navigator.onLine !== false;
      if (anyTrouble) showNotice('Reconnecting to Alfred…');
      else if (state === 'live' || state === 'done') showNotice('');
    },
    onAuthError() {
      if (auth?.mode === 'token') openAccountDialog('token');
    },
  };
}

function watch(job) {
  if (job.links) jobObjects.set(job.job_id, job);
  noteJob(job.job_id, job.conversation_id, job.created_at);
  jobEntry(job.job_id, job.message || messageOf(job.job_id));
  client.watchJob(job, handlersFor(job.job_id));
}

// ---- sending ---------------------------------------------------------------------------
function convKey() { return `alfred:${auth.user}:conversation`; }

// The outbox: every message is written here (text, Idempotency-Key, conversation) before it leaves,
// and removed once the server has its job. A message sent offline, or while the tab is being
// closed, is sent from here on reconnect or on the next visit, with the same key: one job, never two.
const OUTBOX_KEY = () => `alfred:${auth.user}:outbox`;
function outbox() {
  if (!auth) return [];
  try { return JSON.parse(localStorage.getItem(OUTBOX_KEY()) || '[]'); } catch { return []; }
}
function saveOutbox(list) {
  try { localStorage.setItem(OUTBOX_KEY(), JSON.stringify(list)); } catch { /* best effort */ }
}
function updateEntry(key, patch) {
  saveOutbox(outbox().map((e) => (e.key === key ? { ...e, ...patch } : e)));
}
function dropEntry(key) {
  saveOutbox(outbox().filter((e) => e.key !== key));
  els.messages.querySelector(`li[data-outbox="${CSS.escape(key)}"]`)?.remove();
}

/** A message waiting to be sent: your bubble, "Waiting for the network", at the bottom. */
function showWaiting(entry) {
  if (els.messages.querySelector(`li[data-outbox="${CSS.escape(entry.key)}"]`)) return;
  if (entry.conv && conversationId && entry.conv !== conversationId) return;
  const li = userBubble(entry.text);
  li.dataset.outbox = entry.key;
  li.classList.add('is-unsent');
  const note = document.createElement('span');
  note.className = 'unsent-note';
  note.textContent = navigator.onLine === false ? 'Not sent yet — it goes when you are back online'
    : 'Sending…';
  $('.bubble', li).append(note);
  els.empty.hidden = true;
  els.messages.append(li);
  scrollToEnd();
}

// The box is never locked while Alfred works: a message sent meanwhile is a job of its own that
// the server queues behind the earlier ones of the conversation (shown "Queued"), then runs.
function send() {
  const text = els.message.value.trim();
  if (!text || !client) return undefined;
  // Same draft text → same Idempotency-Key: a double tap or a resend is one job. Keyed now, sent
  // in turn: each submit waits for the one before (so it has the conversation id and its place).
  const key = draft.keyFor(text);
  const multitask = chosenMultitask();
  if (!outbox().some((e) => e.key === key)) saveOutbox([...outbox(), { key, text, conv: null, tried: false, multitask }]);
  stickToEnd();
  if (navigator.onLine === false) {
    offlineQueued(key, text);
    return undefined;
  }
  return enqueueSubmit(key);
}

function offlineQueued(key, text) {
  draft.sent(text);
  if (els.message.value.trim() === text) {
    els.message.value = '';
    autoGrow();
  }
  const entry = outbox().find((e) => e.key === key);
  if (entry) showWaiting(entry);
  updateOnline();
}

function enqueueSubmit(key) {
  const c = client;
  const run = sending.then(() => submit(c, key));
  sending = run.catch(() => {});
  return run;
}

/** Send what waits in the outbox (back online, or a new visit), in the order it was written. */
function flushOutbox() {
  if (!client || navigator.onLine === false) return;
  for (const e of outbox()) {
    showWaiting(e);
    const li = els.messages.querySelector(`li[data-outbox="${CSS.escape(e.key)}"] .unsent-note`);
    if (li) li.textContent = 'Sending…';
    enqueueSubmit(e.key);
  }
}

async function submit(c, key) {
  if (client !== c) return; // signed out or switched user meanwhile
  const entry = outbox().find((e) => e.key === key);
  if (!entry) return; // already sent (a double tap, or a flush that raced the first send)
  showNotice('');
  showComposerNote('');
  // The body is fixed at the first try: a resend (after a reload) must be the same request.
  if (!entry.tried) {
    entry.conv = entry.conv || conversationId;
    entry.tried = true;
    updateEntry(key, { conv: entry.conv, tried: true });
  }
  try {
    const job = await c.submitChat(entry.text, {
      conversationId: entry.conv || undefined, idempotencyKey: key, multitask: entry.multitask || undefined,
    });
    draft.sent(entry.text);
    dropEntry(key);
    if (client !== c) return;
    if (els.message.value.trim() === entry.text) {
      els.message.value = '';
      autoGrow();
    }
    if (!conversationId && !entry.conv) { // the first message of a new chat: this is its conversation
      rememberConversation(job.conversation_id);
      setConversationUrl(conversationId, false);
      // Seen (from the job list) before its answer came back: it is this conversation's after all.
      for (const id of Array.from(detached.keys())) if (shownHere(id)) attach(id);
    }
    if (job.steered === true) {
      steeredInto(job, entry.text);
    } else {
      const missed = entry.multitask === 'steer' && job.steered === false;
      if (missed) steerMissed.add(job.job_id);
      watch(job);
      if (missed) {
        $('.steer-note', jobEntry(job.job_id)).hidden = false;
        announce(job.job_id, 'Too late to add to the answer before: your message went as a new one.');
      }
    }
    if (navigator.onLine === false) updateOnline();
    offerNotifications();
  } catch (err) {
    if (err instanceof AlfredApiError && err.status === 0) {
      // No network: it stays in the outbox and goes when the browser is back online.
      offlineQueued(key, entry.text);
      const note = els.messages.querySelector(`li[data-outbox="${CSS.escape(key)}"] .unsent-note`);
      if (note) note.textContent = 'Not sent yet — it goes when you are back online';
      return;
    }
    dropEntry(key);
    if (err instanceof AlfredApiError && err.status === 401) {
      openAccountDialog();
    } else if (err instanceof AlfredApiError && err.code === 'too_many_jobs') {
      const when = err.retryAfter ? `in ${err.retryAfter} s` : 'in a moment';
      showComposerNote('Too many requests under way: Alfred is already working on as many of yours as he can. '
        + `Wait for one to finish and send again (try ${when}). Your message is still here.`);
    } else {
      showNotice(`Couldn't send: ${err.message}`);
    }
  }
}

/** Retry a failed job: its message again, as a new job in the same conversation. */
function retryJob(jobId, li) {
  const text = messageOf(jobId);
  if (!text) return;
  const btn = $('.retry', li);
  btn.disabled = true;
  const conv = metaOf(jobId)?.conversation || client.record(jobId)?.conversationId || conversationId;
  const key = newId();
  saveOutbox([...outbox(), { key, text, conv, tried: false }]);
  if (navigator.onLine === false) { showWaiting({ key, text, conv }); updateOnline(); return; }
  enqueueSubmit(key).finally(() => { btn.disabled = false; });
}

function autoGrow() {
  els.message.style.height = 'auto';
  els.message.style.height = `${Math.min(els.message.scrollHeight, 160)}px`;
}

els.composer.addEventListener('submit', (e) => { e.preventDefault(); send(); });
els.message.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
els.message.addEventListener('input', autoGrow);

// ---- the newest thing stays in view -------------------------------------------------------
// The conversation follows its end (a streaming reply, a queued message, a question, the panel
// that offers notifications taking room) unless the user scrolled up to read. Only the user's
// own scrolling (wheel, touch, keys) lets go of the end: content that grows or shrinks, and the
// browser's scroll anchoring, move scrollTop too, and must not. Back at the end, it follows again.
let stick = true;
let userScrolledAt = -Infinity;
const NEAR_END_PX = 64;
const USER_SCROLL_MS = 1000;

function nearEnd() {
  const c = els.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < NEAR_END_PX;
}

const userScrolls = () => { userScrolledAt = performance.now(); };
for (const type of ['wheel', 'touchmove']) els.conversation.addEventListener(type, userScrolls, { passive: true });
els.conversation.addEventListener('keydown', (e) => {
  if (['ArrowUp', 'ArrowDown', 'PageUp', 'PageDown', 'Home', 'End', ' '].includes(e.key)) userScrolls();
});
els.conversation.addEventListener('scroll', () => {
  if (nearEnd()) stick = true;
  else if (performance.now() - userScrolledAt < USER_SCROLL_MS) stick = false;
}, { passive: true });

/** Follow the end from now on (the user sent something, or opened a conversation). */
function stickToEnd() {
  stick = true;
  scrollToEnd();
}

function followEnd() {
  if (stick) scrollToEnd();
}

if ('ResizeObserver' in window) {
  const ro = new ResizeObserver(followEnd);
  ro.observe(els.messages);
  ro.observe(els.conversation);
}

/** Show an element that asks for the user (a question's buttons): whether or not following. */
function bringIntoView(el) {
  requestAnimationFrame(() => {
    el.scrollIntoView({ block: 'nearest' });
    if (nearEnd()) stick = true;
  });
}

// ---- steering: a message sent while Alfred works joins what he is doing ---------------------
const steerMissed = new Set(); // jobs made of a steer that came too late (Alfred was replying)

/** The 202 said steered: the message joined the active job; it shows as the user's, above Alfred's bubble. */
function steeredInto(job, text) {
  jobObjects.set(job.job_id, { ...jobObjects.get(job.job_id), ...job });
  const li = jobEntry(job.job_id);
  const view = lastViews.get(job.job_id);
  if (view) render(job.job_id, view);
  else renderSteers(job.job_id, li, { steers: [] });
  announce(job.job_id, 'Added to what Alfred is doing: he takes it into account at his next step.');
  if (!client.watching().includes(job.job_id) && !isTerminal(job.status)) watch(job);
}

/** The user's messages that joined a job (its steered events, then those this device sent that
 * the server took but the runner has not recorded yet), each a bubble of the user's between the
 * job's first message and Alfred's bubble. */
function renderSteers(jobId, li, view) {
  const taken = (view.steers || []).map((x) => x.text);
  const left = [...taken];
  const sent = (client.record(jobId)?.steers || []).map((m) => m.message);
  const pending = sent.filter((t) => {
    const i = left.indexOf(t);
    if (i === -1) return true;
    left.splice(i, 1); // its event arrived
    return false;
  });
  const waiting = !isTerminal(view.status || 'pending');
  const all = [...taken.map((text) => ({ text, pending: false })), ...pending.map((text) => ({ text, pending: waiting }))];
  const bubbles = li.steerBubbles || (li.steerBubbles = []);
  if (!all.length && !bubbles.length) return;
  while (bubbles.length < all.length) {
    const b = userBubble('', jobId);
    b.classList.add('msg-steer');
    const tag = document.createElement('span');
    tag.className = 'steer-tag';
    $('.bubble', b).append(tag);
    bubbles.push(b);
  }
  for (const extra of bubbles.splice(all.length)) extra.remove();
  all.forEach((m, i) => {
    const b = bubbles[i];
    $('.msg-text', b).textContent = m.text;
    b.classList.toggle('is-pending', m.pending);
    $('.steer-tag', b).textContent = m.pending ? 'Added while Alfred works: he reads it at his next step'
      : 'Added while Alfred worked';
  });
  if (li.parentNode === els.messages) {
    let prev = li.previousElementSibling;
    let inOrder = true;
    for (let i = bubbles.length - 1; i >= 0; i -= 1) {
      if (prev !== bubbles[i]) { inOrder = false; break; }
      prev = prev.previousElementSibling;
    }
    if (!inOrder) for (const b of bubbles) els.messages.insertBefore(b, li);
  }
}

/** The conversation's job being worked on now (the first active one in the server's order). */
function workingJob() {
  let best = null;
  for (const [jobId, active] of activeJobs) {
    if (!active || !shownHere(jobId)) continue;
    const li = els.messages.querySelector(`li.msg-alfred[data-job-id="${CSS.escape(jobId)}"]`);
    if (!li) continue;
    const order = metaOf(jobId)?.order || '';
    if (!best || order < best.order) best = { jobId, order, li };
  }
  return best;
}

/** While a job of this conversation is under way: the choices for the next message, and Stop. */
function refreshComposer() {
  const working = workingJob();
  const was = !els.whileWorking.hidden;
  els.whileWorking.hidden = !working;
  if (!working && was) resetMultitask();
}

function resetMultitask() {
  const steer = els.whileWorking.querySelector('input[name="multitask"][value="steer"]');
  if (steer) steer.checked = true;
}

/** What a message sent now does: steer (default), enqueue or interrupt while a job is under way. */
function chosenMultitask() {
  if (els.whileWorking.hidden) return undefined;
  const value = els.whileWorking.querySelector('input[name="multitask"]:checked')?.value || 'steer';
  resetMultitask(); // each message chooses afresh; steering is the default
  return value;
}

els.stop.addEventListener('click', () => {
  const working = workingJob();
  if (working) cancel(working.jobId, working.li);
});

// ---- a reply that finished in another conversation, said where the user is ---------------------
function showElsewhereToast(jobId, view) {
  const conv = metaOf(jobId)?.conversation || jobObjects.get(jobId)?.conversation_id || client.record(jobId)?.conversationId;
  if (!conv || els.toasts.querySelector(`.toast[data-job-id="${CSS.escape(jobId)}"]`)) return;
  const title = conversationTitles.get(conv) || messageOf(jobId) || 'another conversation';
  const what = view.status === 'complete' ? 'Alfred finished' : view.status === 'failed' ? "Alfred couldn't finish"
    : 'Alfred stopped';
  const toast = document.createElement('div');
  toast.className = `toast toast-${view.status}`;
  toast.dataset.jobId = jobId;
  toast.dataset.conversationId = conv;
  const text = document.createElement('span');
  text.className = 'toast-text';
  text.textContent = `${what} in “${title}”`;
  const link = document.createElement('a');
  link.href = `#/c/${conv}`;
  link.textContent = 'Open';
  link.setAttribute('aria-label', `Open “${title}”`);
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'secondary';
  close.textContent = 'Dismiss';
  close.addEventListener('click', () => toast.remove());
  toast.append(text, link, close);
  els.toasts.append(toast);
  unseenElsewhere.add(conv);
  // Two at most: older news stays on the Chats button's count until its conversation is opened.
  while (els.toasts.children.length > MAX_TOASTS) els.toasts.firstElementChild.remove();
  updateChatsBadge();
  announce(jobId, `${what} in another conversation: ${title}.`);
}

const unseenElsewhere = new Set(); // conversations with an ending the user has not opened yet
const MAX_TOASTS = 2;

function updateChatsBadge() {
  const n = unseenElsewhere.size;
  els.chatsBadge.textContent = String(n);
  els.chatsBadge.hidden = !n;
}

/** Opening a conversation settles what was said about it. */
function dropToastsOf(conv) {
  for (const t of els.toasts.querySelectorAll(`.toast[data-conversation-id="${CSS.escape(conv)}"]`)) t.remove();
  unseenElsewhere.delete(conv);
  updateChatsBadge();
}

// ---- every conversation: a list, a URL each (#/c/ID), Back works ----------------------------
const conversationTitles = new Map(); // conversation id → its title (from the list)
let recentJobs = []; // the user's latest RECENT_JOBS jobs (newest first): which conversation, when each was sent

function conversationFromUrl() {
  const m = /^#\/c\/([A-Za-z0-9_-]{1,64})$/.exec(window.location.hash);
  return m ? m[1] : null;
}

/** This conversation's URL, as a new history entry (push) or in place of the current one. */
function setConversationUrl(id, push) {
  if (jobFromHash()) return; // opened from a notification: that URL stays what it was
  const hash = id ? `#/c/${id}` : '#/new';
  if (window.location.hash === hash) return;
  const url = `${window.location.pathname}${window.location.search}${hash}`;
  if (push) window.history.pushState({ conversation: id }, '', url);
  else window.history.replaceState({ conversation: id }, '', url);
}

function rememberConversation(id) {
  conversationId = id;
  debug.conversationId = id;
  try {
    if (id) localStorage.setItem(convKey(), id);
    else localStorage.removeItem(convKey());
  } catch { /* ignore */ }
}

/** Take every bubble off the page (their jobs are still watched) and empty it. */
function leaveConversation() {
  for (const li of els.messages.querySelectorAll('li.msg-alfred[data-job-id]')) detached.set(li.dataset.jobId, li);
  pinned.clear();
  resetPage();
}

/** Show another conversation: what this device knows at once, then the server's turns and ended jobs. */
async function openConversation(id, { push = true } = {}) {
  const c = client;
  if (!c) return;
  if (els.chatsDialog.open) els.chatsDialog.close();
  if (push) setConversationUrl(id, true);
  if (id === conversationId) return;
  leaveConversation();
  rememberConversation(id);
  dropToastsOf(id);
  for (const jobId of Array.from(detached.keys())) if (shownHere(jobId)) attach(jobId);
  for (const r of c.records().filter((x) => !x.gone && x.view && x.conversationId === id)) {
    if (!lastViews.has(r.jobId)) {
      jobEntry(r.jobId, r.message);
      render(r.jobId, r.view);
    }
  }
  for (const e of outbox()) showWaiting(e);
  refreshComposer();
  stickToEnd();
  try {
    recentJobs = (await c.listJobs({ limit: RECENT_JOBS })).jobs || recentJobs;
    for (const j of recentJobs) noteJob(j.job_id, j.conversation_id, j.created_at);
  } catch { /* offline: what we have is shown */ }
  if (client !== c || conversationId !== id) return;
  const jobs = await loadConversationJobs(c, id);
  if (client !== c || conversationId !== id) return;
  try {
    const conv = await c.getConversation(id);
    if (client !== c || conversationId !== id) return;
    mergeConversation(conv.messages || []);
  } catch { /* offline or expired */ }
  await showEndedJobs(c, id, jobs);
  if (client !== c || conversationId !== id) return;
  // Jobs still under way in it (sent from another device meanwhile) join it.
  syncConversation();
  refreshComposer();
  followEnd();
}

/** "New chat": an empty conversation (its own URL, #/new); the next message starts it on the server. */
function newChat({ push = true } = {}) {
  if (!client) return;
  if (els.chatsDialog.open) els.chatsDialog.close();
  leaveConversation();
  rememberConversation(null);
  if (push) setConversationUrl(null, true);
  refreshComposer();
  els.message.focus();
}

/**
 * This conversation's own jobs, newest first (`GET /api/jobs?conversation_id=`, one page of 100:
 * as many as the latest page of its turns), however many jobs the user sent since in other
 * conversations; each one's send time orders its turn. A listing (the server's index may lag a
 * moment): what it says of a job is checked in the job's log before it is shown. Offline, or
 * against a server that ignores the filter, what the user's latest jobs hold of it.
 */
async function loadConversationJobs(c, conv) {
  const known = recentJobs.filter((j) => j.conversation_id === conv);
  let jobs = [];
  try {
    jobs = ((await c.listJobs({ conversationId: conv, limit: 100 })).jobs || []).filter((j) => j.conversation_id === conv);
  } catch { return known; }
  const ids = new Set(jobs.map((j) => j.job_id));
  jobs = [...jobs, ...known.filter((j) => !ids.has(j.job_id))];
  for (const j of jobs) noteJob(j.job_id, j.conversation_id, j.created_at);
  return jobs;
}

/**
 * The jobs of this conversation that ended and are not (only) committed turns: failed and
 * cancelled ones, and the answers given on the way, read from each job's log as the device that
 * sent them saw it. From the conversation's jobs (`loadConversationJobs`), one job at a time.
 */
async function showEndedJobs(c, conv, jobs) {
  const ended = jobs.filter((j) => j.conversation_id === conv && isTerminal(j.status)
    && (!lastViews.has(j.job_id) || lastViews.get(j.job_id).fromTurns));
  for (const j of ended) {
    let view;
    try { view = await c.readView(j.job_id); } catch { continue; }
    if (client !== c || conversationId !== conv) return;
    if (!isTerminal(view.status)) continue; // the list was behind: its watcher shows it
    noteJob(j.job_id, j.conversation_id, j.created_at);
    jobObjects.set(j.job_id, { ...j, ...jobObjects.get(j.job_id) });
    jobEntry(j.job_id, j.message);
    const known = lastViews.get(j.job_id);
    quiet = true; // history is not news
    try {
      render(j.job_id, known?.fromTurns && !view.steers.length ? { ...view, steers: known.steers } : view);
    } finally {
      quiet = false;
    }
  }
}

async function loadConversationList() {
  const c = client;
  els.chatsStatus.textContent = 'Loading…';
  let list;
  try {
    list = (await c.listConversations({ limit: 50 })).conversations || [];
  } catch (err) {
    if (!(err instanceof AlfredApiError) || err.status !== 404) {
      els.chatsStatus.textContent = navigator.onLine === false ? "You're offline: the list comes back with the network."
        : `Couldn't load your conversations: ${err.message}`;
      return;
    }
    list = await conversationsFromJobs(c); // a server without GET /api/conversations
  }
  if (client !== c) return;
  els.chatsStatus.textContent = list.length ? '' : 'No conversations yet.';
  els.chatsList.replaceChildren(...list.map((conv) => {
    conversationTitles.set(conv.conversation_id, conv.title || 'Untitled');
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = `#/c/${conv.conversation_id}`;
    a.dataset.conversationId = conv.conversation_id;
    if (conv.conversation_id === conversationId) a.setAttribute('aria-current', 'page');
    const title = document.createElement('span');
    title.className = 'chat-title';
    title.textContent = conv.title || 'Untitled';
    const when = document.createElement('time');
    when.className = 'chat-when';
    const at = Date.parse(conv.updated_at);
    if (!Number.isNaN(at)) {
      when.dateTime = new Date(at).toISOString();
      when.textContent = timeFormat.format(new Date(at));
    }
    a.append(title, when);
    li.append(a);
    return li;
  }));
}

/** The list folded from the user's latest jobs (newest first; titled by each one's first message). */
async function conversationsFromJobs(c) {
  const jobs = (await c.listJobs({ limit: RECENT_JOBS })).jobs || [];
  const byConv = new Map();
  for (const j of jobs) {
    const cur = byConv.get(j.conversation_id);
    if (!cur) byConv.set(j.conversation_id, { conversation_id: j.conversation_id, updated_at: j.created_at, title: j.message });
    else cur.title = j.message; // older: the conversation's first message titles it
  }
  return Array.from(byConv.values()).map((x) => ({ ...x, title: (x.title || '').slice(0, 80) }));
}

els.chatsButton.addEventListener('click', () => {
  if (!client) return;
  els.chatsDialog.showModal();
  loadConversationList();
});
els.chatsClose.addEventListener('click', () => els.chatsDialog.close());
els.chatsNew.addEventListener('click', () => newChat());
els.chatsList.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-conversation-id]');
  if (!a) return;
  e.preventDefault();
  openConversation(a.dataset.conversationId);
});
// Back and Forward between conversations (and a toast's link, a #/c/ID typed in).
window.addEventListener('popstate', () => {
  if (!client || jobFromHash()) return;
  const id = conversationFromUrl();
  if (id) openConversation(id, { push: false });
  else if (window.location.hash === '#/new' && conversationId) newChat({ push: false });
});
window.addEventListener('hashchange', () => {
  const id = conversationFromUrl();
  if (client && id && id !== conversationId) openConversation(id, { push: false });
});

// ---- start -----------------------------------------------------------------------------
function resetPage() {
  els.messages.replaceChildren();
  els.awayCards.replaceChildren();
  els.empty.hidden = false;
  els.whileWorking.hidden = true;
}

async function start(nextAuth) {
  client?.close();
  resetPage();
  showComposerNote('');
  lastAnnounced.clear();
  for (const m of [jobMeta, activeJobs, lastViews, queuedJobs, jobObjects, closedQuestions, committedAt, detached, pinned,
    steerMissed, conversationTitles, unseenElsewhere]) {
    m.clear();
  }
  els.toasts.replaceChildren();
  updateChatsBadge();
  hideNotifyPrompt();
  pushKey = undefined;
  auth = nextAuth;
  els.accountName.textContent = auth.user;
  client = createAlfredClient({
    baseUrl: apiBase, getToken: () => auth.token, scope: auth.user, sse: config.sse !== false,
  });
  debug.client = client;
  draft = client.draftKey();
  const c = client;

  // 1. Which conversation: the last one this browser used, else the user's most recent (the job
  // list also tells when each recent job was sent, for the order of their turns).
  const fromUrl = conversationFromUrl();
  conversationId = fromUrl || (window.location.hash === '#/new' ? null : localStorage.getItem(convKey()));
  if (fromUrl) localStorage.setItem(convKey(), fromUrl);
  try {
    const recent = (await c.listJobs({ limit: RECENT_JOBS })).jobs || [];
    if (client !== c) return;
    recentJobs = recent;
    for (const j of recent) {
      noteJob(j.job_id, j.conversation_id, j.created_at);
      if (!jobObjects.has(j.job_id)) jobObjects.set(j.job_id, j);
    }
    if (!conversationId && recent.length) {
      conversationId = recent[0].conversation_id;
      localStorage.setItem(convKey(), conversationId);
    }
  } catch (err) {
    if (err instanceof AlfredApiError && err.status === 401) openAccountDialog();
    /* offline: what this device knows is shown */
  }
  debug.conversationId = conversationId;
  if (conversationId) setConversationUrl(conversationId, false);
  await showConversation(c);
}

/** Render the conversation: what this device knows at once, then the server's committed turns,
 * then every job still under way (from any device), then messages not sent yet. */
async function showConversation(c) {
  // What this device already knows, at once (works offline too).
  for (const r of client.records().filter((x) => !x.gone && x.view)) {
    if (r.conversationId === conversationId || r.active || r.finishedAway) {
      jobEntry(r.jobId, r.message);
      render(r.jobId, r.view);
    }
  }

  // The committed conversation from the server (turns sent from other devices too).
  if (conversationId) {
    const jobs = await loadConversationJobs(c, conversationId);
    if (client !== c) return;
    try {
      const conv = await client.getConversation(conversationId);
      if (client !== c) return;
      mergeConversation(conv.messages || []);
    } catch { /* offline or expired: what we have is shown */ }
    await showEndedJobs(c, conversationId, jobs);
    if (client !== c) return;
  }

  // Resume every job still running (this device's and the user's others, with their own text).
  try {
    await client.resumeActiveJobs((job) => {
      if (job.links) jobObjects.set(job.job_id, { ...jobObjects.get(job.job_id), ...job });
      noteJob(job.job_id, job.conversation_id, job.created_at);
      jobEntry(job.job_id, job.message || messageOf(job.job_id));
      return handlersFor(job.job_id);
    });
  } catch (err) {
    if (err instanceof AlfredApiError && err.status === 401) openAccountDialog();
  }
  if (client !== c) return;

  // Jobs that ended while the page was closed, not yet acknowledged.
  for (const r of client.finishedWhileAway()) showAwayCard(r.jobId);

  // Messages written but not sent (offline, or the tab closed at once): shown, and sent now.
  for (const e of outbox()) showWaiting(e);
  flushOutbox();
  updateOnline();
  refreshComposer();
  stickToEnd();

  // Opened from a notification (#job=ID): show that job.
  if (jobFromHash()) await openJob(jobFromHash());

  // Notifications allowed before: renew this browser's subscription (it lives a retention period).
  if (pushSupported() && Notification.permission === 'granted') subscribePush().catch(() => {});
}

/** The server's committed turns, merged by job id with what is on the page, each in its place. */
function mergeConversation(messages) {
  const turns = new Map();
  for (const m of messages) {
    if (!m.job_id) continue;
    const t = turns.get(m.job_id) || { steers: [] };
    if (m.role === 'user' && t.user !== undefined) t.steers.push(m.text); // joined the job (steer)
    else t[m.role] = m.text;
    if (m.role === 'assistant' && m.stopped) t.stopped = true;
    t.at = m.at;
    turns.set(m.job_id, t);
  }
  for (const [jobId, t] of turns) {
    committedAt.set(jobId, Date.parse(t.at));
    if (!jobMeta.has(jobId)) noteJob(jobId, conversationId, null);
    jobEntry(jobId, t.user);
    if (!lastViews.has(jobId)) {
      lastAnnounced.set(jobId, 'Alfred finished.'); // history is not news
      render(jobId, committedView(jobId, t));
    } else {
      place(jobId);
    }
  }
}

/** Back online or back on the page: the turns committed meanwhile and the jobs sent meanwhile
 * (from the CLI, another device) join the conversation, each in its place. */
async function syncConversation() {
  const c = client;
  if (!c || navigator.onLine === false) return;
  try {
    if (conversationId) {
      const conv = await c.getConversation(conversationId);
      if (client !== c) return;
      mergeConversation(conv.messages || []);
    }
    const active = (await c.listJobs({ status: 'active', limit: 50 })).jobs || [];
    if (client !== c) return;
    const watching = new Set(c.watching());
    for (const job of active) {
      if (watching.has(job.job_id) || lastViews.get(job.job_id)?.status && isTerminal(lastViews.get(job.job_id).status)) continue;
      watch(job);
    }
  } catch { /* the watchers retry by themselves */ }
}
window.addEventListener('online', () => { syncConversation(); });
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') syncConversation();
});

// "New chat": an empty conversation; the next message starts a new one on the server.
els.newChat.addEventListener('click', () => newChat());

async function boot() {
  updateOnline();
  registerServiceWorker();
  try {
    const a = await signIn();
    if (!a) {
      els.accountName.textContent = 'Sign in';
      openAccountDialog('token');
      return;
    }
    if (a.mode === 'dev') saveAuth(a);
    await start(a);
  } catch (err) {
    showNotice(`Couldn't sign in: ${err.message}`);
  }
}

boot();
