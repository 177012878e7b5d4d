// alfred-client.js — a small client for alfred-jobs: submit a chat message as a durable job,
// watch it (SSE, falling back to long-poll), resume after reloads, sleeps and lost networks.
// No dependencies, no build step. Types: alfred-client.d.ts. Guide: docs/web.md.
//
// Why it is shaped this way:
// - The job runs on the server whatever the page does; this module is only a viewer. Every view
//   is a fold of the job's event log, so "where is Alfred?" is answered by replaying events
//   after the last seq this device has seen. The seq and the folded view are kept in
//   localStorage per job, so a reload shows the same state at once and nothing is shown twice.
// - We reconnect ourselves (close the EventSource on error and open a new one with ?after=)
//   rather than relying on EventSource's own retry: the stream token in links.stream is
//   short-lived, so a reconnect first fetches the job (fresh links, fresh token), and we want to
//   reconnect at once when the page becomes visible or the network comes back.

const TERMINAL = new Set(['complete', 'failed', 'cancelled']);
const TERMINAL_EVENTS = { complete: 'complete', failed: 'failed', cancelled: 'cancelled' };
const DAY_MS = 24 * 3600 * 1000;

/**
 * An error answer from the API ({error: {code, message}}) or a network failure (status 0).
 * `retryAfter`: the Retry-After header in seconds (a 429, a 503), else null. `jobId`: on a 409
 * conversation_busy, the conversation's active job.
 */
export class AlfredApiError extends Error {
  constructor(status, code, message, { retryAfter = null, jobId = null } = {}) {
    super(message);
    this.name = 'AlfredApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.jobId = jobId;
  }

  /** True when sending the same request again may succeed (network, 5xx, 429). */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

/** True for the statuses a job never leaves. */
export function isTerminal(status) {
  return TERMINAL.has(status);
}

/** A random id (RFC 4122 v4 when crypto.randomUUID exists). */
export function newId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** An empty view of a job, before any event. */
export function emptyView(jobId, status = 'pending') {
  return {
    jobId, status, phase: null, attempt: 1, totalSteps: null, steps: [], currentStep: null,
    completedSteps: 0, label: null, reply: '', error: null, retry: null, lastSeq: 0,
    cancelReason: null, cancelledBy: null, question: null, answered: null, stopped: false, steers: [],
  };
}

/** Fold one event into a view (pure: returns a new view). Events must arrive in seq order. */
export function applyEvent(view, ev) {
  const v = { ...view, steps: view.steps.slice(), lastSeq: ev.seq };
  const d = ev.data || {};
  if (ev.attempt) v.attempt = ev.attempt;
  switch (ev.type) {
    case 'status':
      v.status = d.status || v.status;
      // A job starts by thinking: `status: running` opens that phase (no `phase` event says so).
      if (d.status === 'running' && !v.totalSteps && !v.phase) { v.phase = 'think'; v.label = 'Thinking'; }
      v.retry = d.retry_in != null ? { inSeconds: d.retry_in, error: d.error || null, at: ev.at } : null;
      break;
    case 'resumed':
      v.status = 'running';
      v.retry = null;
      v.attempt = d.attempt || v.attempt;
      break;
    case 'phase':
      v.phase = d.phase;
      v.status = isTerminal(v.status) ? v.status : 'running';
      if (d.phase === 'think') v.label = 'Thinking';
      if (d.phase === 'reply') { v.label = 'Writing the reply'; v.currentStep = null; }
      break;
    case 'plan': {
      v.totalSteps = d.total_steps ?? (d.steps || []).length;
      for (const s of d.steps || []) upsertStep(v.steps, s.index, { label: s.label });
      // The first step may start with the plan (`next`): one write, not two.
      if (d.next && typeof d.next.index === 'number'
          && !view.steps.some((s) => s.index === d.next.index && s.status)) {
        upsertStep(v.steps, d.next.index, { label: d.next.label, status: 'started' });
        v.phase = 'act';
        v.currentStep = d.next.index;
        v.label = d.next.label;
      }
      break;
    }
    case 'step': {
      v.phase = 'act'; // steps are the act phase: no `phase` event opens it
      v.totalSteps = d.total ?? v.totalSteps;
      const done = d.status === 'completed';
      upsertStep(v.steps, d.index, { label: d.label, status: done ? 'completed' : 'started' });
      v.completedSteps = v.steps.filter((s) => s.status === 'completed').length;
      const wasDone = !done && view.steps.some((s) => s.index === d.index && s.status === 'completed');
      if (!wasDone) {
        v.currentStep = done ? null : d.index;
        v.label = d.label;
      }
      // A completed step may start the next one in the same event (`next`): one write, not two.
      const next = done && d.next && typeof d.next.index === 'number' ? d.next : null;
      if (next && !view.steps.some((s) => s.index === next.index && s.status === 'completed')) {
        upsertStep(v.steps, next.index, { label: next.label, status: 'started' });
        v.currentStep = next.index;
        v.label = next.label;
      }
      v.retry = null;
      break;
    }
    case 'delta':
      v.reply = d.replace ? d.text : v.reply + d.text;
      break;
    case 'input_required':
      // Alfred asks and waits (for seconds or for a day): the job holds nothing meanwhile.
      v.status = 'waiting';
      v.question = {
        inputId: d.input_id, prompt: d.prompt, kind: d.kind, options: d.options || null,
        expiresAt: d.expires_at || null, seq: ev.seq,
      };
      v.retry = null;
      break;
    case 'steered':
      // A message the user added to this job (multitask "steer"): the agent sees it from here on.
      if (!(v.steers || []).some((m) => m.messageId === d.message_id)) {
        v.steers = [...(v.steers || []), { messageId: d.message_id, text: d.text, at: ev.at }];
      }
      break;
    case 'input_received':
      // Answered, on this device or any other: the question is closed and the job goes on.
      if (v.question && v.question.inputId === d.input_id) {
        v.answered = { inputId: d.input_id, answer: d.answer, prompt: v.question.prompt, kind: v.question.kind };
        v.question = null;
      } else {
        v.answered = { inputId: d.input_id, answer: d.answer, prompt: null, kind: null };
      }
      if (v.status === 'waiting') v.status = 'running';
      break;
    case 'complete':
      v.status = 'complete';
      v.question = null;
      v.reply = d.output?.reply ?? v.reply;
      v.label = 'Done';
      v.currentStep = null;
      v.retry = null;
      break;
    case 'failed':
      v.status = 'failed';
      v.question = null;
      v.error = d.error || { code: 'failed', message: 'Alfred could not finish this request.' };
      v.currentStep = null;
      v.retry = null;
      break;
    case 'cancelled':
      v.status = 'cancelled';
      v.question = null;
      // {reason: "interrupted", by: <job id>}: a later message of the conversation sent with
      // multitask "interrupt" ended it; {} for a plain cancel.
      v.cancelReason = d.reason || null;
      v.cancelledBy = d.by || null;
      // Stopped during its reply: the reply so far is kept (and committed as a stopped turn).
      if (d.partial_reply) v.reply = d.partial_reply;
      v.stopped = Boolean(d.partial_reply);
      v.currentStep = null;
      v.retry = null;
      break;
    default:
      break; // unknown types are ignored: the contract may grow
  }
  return v;
}

function upsertStep(steps, index, patch) {
  const i = steps.findIndex((s) => s.index === index);
  if (i === -1) {
    steps.push({ index, label: patch.label || `Step ${index}`, status: patch.status || 'pending' });
    steps.sort((a, b) => a.index - b.index);
  } else {
    const cur = steps[i];
    // A completed step stays completed even if a retry announces it again.
    const status = cur.status === 'completed' ? 'completed' : (patch.status || cur.status);
    steps[i] = { ...cur, label: patch.label || cur.label, status };
  }
}

/** The step to show as "Step k of n": the one running, else the next one, capped at n. */
export function stepOf(view) {
  const n = view.totalSteps;
  if (!n) return null;
  const k = view.currentStep ?? Math.min(n, view.completedSteps + 1);
  return { k, n };
}

function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
    key: (i) => Array.from(m.keys())[i] ?? null,
    get length() { return m.size; },
  };
}

function defaultStorage() {
  try {
    const s = globalThis.localStorage;
    const probe = '__alfred_probe__';
    s.setItem(probe, '1');
    s.removeItem(probe);
    return s;
  } catch {
    return memoryStorage(); // private mode or storage disabled: still works, just forgets
  }
}

/**
 * Create a client. See alfred-client.d.ts for the options and the returned API.
 * @param {import('./alfred-client').ClientOptions} options
 */
export function createAlfredClient(options = {}) {
  const baseUrl = (options.baseUrl || '').replace(/\/+$/, '');
  const getToken = options.getToken || (() => null);
  const storage = options.storage || defaultStorage();
  const prefix = `${options.namespace || 'alfred'}:${options.scope || 'default'}:`;
  const fetchImpl = options.fetch || globalThis.fetch.bind(globalThis);
  const pollWait = Math.min(20, options.pollWaitSeconds ?? 20);
  const useSse = options.sse !== false && typeof globalThis.EventSource === 'function';
  const doc = globalThis.document;
  const win = globalThis.window;
  /** @type {Map<string, Watcher>} */
  const watchers = new Map();

  // ---- storage: one record per job -------------------------------------------------
  const jobKey = (id) => `${prefix}job:${id}`;
  function readRecord(id) {
    try { return JSON.parse(storage.getItem(jobKey(id)) || 'null'); } catch { return null; }
  }
  function writeRecord(id, patch) {
    const rec = { ...(readRecord(id) || { jobId: id, createdAt: Date.now() }), ...patch, updatedAt: Date.now() };
    try { storage.setItem(jobKey(id), JSON.stringify(rec)); } catch { /* quota: best effort */ }
    return rec;
  }
  function allRecords() {
    const out = [];
    for (let i = 0; i < storage.length; i += 1) {
      const k = storage.key(i);
      if (k && k.startsWith(`${prefix}job:`)) {
        try { out.push(JSON.parse(storage.getItem(k))); } catch { /* skip */ }
      }
    }
    return out.filter(Boolean).sort((a, b) => (a.createdAt || 0) - (b.createdAt || 0));
  }
  function prune(maxAgeMs = 7 * DAY_MS) {
    const cutoff = Date.now() - maxAgeMs;
    for (const r of allRecords()) {
      if ((r.updatedAt || 0) < cutoff) storage.removeItem(jobKey(r.jobId));
    }
  }

  // ---- HTTP ------------------------------------------------------------------------
  function absolute(url) {
    if (/^https?:\/\//i.test(url)) return url;
    return `${baseUrl}${url}`;
  }

  async function api(path, { method = 'GET', body, headers = {}, signal, raw = false } = {}) {
    const token = await getToken();
    const h = { Accept: 'application/json', ...headers };
    if (token) h.Authorization = `Bearer ${token}`;
    if (body !== undefined) h['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetchImpl(absolute(path), {
        method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), signal,
        cache: 'no-store',
      });
    } catch (err) {
      if (err?.name === 'AbortError') throw err;
      throw new AlfredApiError(0, 'network', 'Could not reach Alfred (network error).');
    }
    let data = null;
    try { data = await res.json(); } catch { /* empty or not JSON */ }
    if (!res.ok) {
      const e = data?.error || {};
      // Readable on the same origin; another origin's API must list it in Access-Control-Expose-Headers.
      const wait = Number.parseInt(res.headers.get('Retry-After') || '', 10);
      throw new AlfredApiError(res.status, e.code || `http_${res.status}`, e.message || res.statusText || 'request failed',
        { retryAfter: Number.isFinite(wait) && wait >= 0 ? wait : null, jobId: typeof e.job_id === 'string' ? e.job_id : null });
    }
    return raw ? { status: res.status, data } : data;
  }

  const sleep = (ms, signal) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });

  // ---- submit ------------------------------------------------------------------------
  /**
   * Submit a message as a job. The Idempotency-Key makes a double tap or a resend after a lost
   * answer return the same job; network errors and 5xx are retried with that same key.
   * `multitask` (enqueue | reject | interrupt | steer) says what to do if the conversation has a job
   * under way; unset, the server's default (enqueue: the new job waits its turn). With `steer` the
   * answer says which happened: `steered: true`, the message joined the job `job_id` (the one
   * under way; watch it: its `steered` event shows the message), or `steered: false`, it became
   * a new job (the one under way was already replying or had ended). A 429 too_many_jobs
   * is not retried here: it frees up only when one of the user's jobs ends (see `retryAfter`).
   */
  async function submitChat(message, opts = {}) {
    const key = opts.idempotencyKey || newId();
    const body = { message };
    if (opts.conversationId) body.conversation_id = opts.conversationId;
    if (opts.multitask) body.multitask = opts.multitask;
    const tries = opts.retries ?? 3;
    for (let attempt = 0; ; attempt += 1) {
      try {
        const job = await api('/api/chat', { method: 'POST', body, headers: { 'Idempotency-Key': key }, signal: opts.signal });
        const prev = readRecord(job.job_id);
        if (job.steered === true) {
          // Joined the job under way: its record keeps its own message; this one is a steer of it.
          const steers = [...(prev?.steers || []).filter((m) => m.key !== key), { key, message }];
          writeRecord(job.job_id, { steers, conversationId: job.conversation_id,
            createdAt: prev?.createdAt || Date.parse(job.created_at) || Date.now() });
          watchers.get(job.job_id)?.handlers.onSteered?.({ steered: true, message, job }, watchers.get(job.job_id).view);
          return job;
        }
        writeRecord(job.job_id, {
          message, conversationId: job.conversation_id, status: prev?.status || job.status,
          active: prev ? prev.active : !isTerminal(job.status), idempotencyKey: key,
          createdAt: prev?.createdAt || Date.parse(job.created_at) || Date.now(),
        });
        return job;
      } catch (err) {
        if (!(err instanceof AlfredApiError) || !err.retryable || err.code === 'too_many_jobs' || attempt >= tries) {
          throw err;
        }
        await sleep(Math.min(4000, 300 * 2 ** attempt), opts.signal);
      }
    }
  }

  /**
   * An idempotency key bound to a draft's text: the same text gets the same key until
   * `sent()` is called (after the server accepted it); different text gets a new key
   * (the server answers 409 to the same key with another body). Survives reloads.
   * `sent(text)` forgets the key only if it is still that text's (the user may have sent
   * another draft while this one was on its way).
   */
  function draftKey(name = 'draft') {
    const k = `${prefix}${name}`;
    return {
      keyFor(text) {
        let d = null;
        try { d = JSON.parse(storage.getItem(k) || 'null'); } catch { d = null; }
        if (d && d.text === text) return d.key;
        const key = newId();
        try { storage.setItem(k, JSON.stringify({ text, key })); } catch { /* ignore */ }
        return key;
      },
      sent(text) {
        if (text !== undefined) {
          let d = null;
          try { d = JSON.parse(storage.getItem(k) || 'null'); } catch { d = null; }
          if (d && d.text !== text) return;
        }
        storage.removeItem(k);
      },
    };
  }

  const getJob = (id) => api(`/api/jobs/${encodeURIComponent(id)}`);
  /** GET /api/jobs: the user's jobs, newest first; `conversationId`: only that conversation's. */
  const listJobs = ({ status, limit = 20, cursor, conversationId } = {}) => {
    const q = new URLSearchParams();
    if (status) q.set('status', status);
    if (conversationId) q.set('conversation_id', conversationId);
    q.set('limit', String(limit));
    if (cursor) q.set('cursor', cursor);
    return api(`/api/jobs?${q}`);
  };
  /**
   * Answer the job's question (`input_id` from its `input_required` event) at `links.input`.
   * Resolves {taken: true} on 202 (the job goes on), {taken: false} on 200 (the same answer was
   * already taken). Rejects with an AlfredApiError: 409 `input_answered` (answered otherwise, on
   * another device), `stale_input`, `input_expired`, `job_finished`; 400 `invalid_answer`.
   */
  async function answerInput(jobOrId, inputId, answer) {
    const job = typeof jobOrId === 'string' ? null : jobOrId;
    const id = job ? job.job_id : jobOrId;
    const url = job?.links?.input || `/api/jobs/${encodeURIComponent(id)}/input`;
    const tries = 3;
    for (let attempt = 0; ; attempt += 1) {
      try {
        const res = await api(url, { method: 'POST', body: { input_id: inputId, answer }, raw: true });
        return { taken: res.status === 202, job: res.data };
      } catch (err) {
        // The same answer again is a 200, so a retry after a lost answer is safe.
        if (!(err instanceof AlfredApiError) || !err.retryable || attempt >= tries) throw err;
        await sleep(Math.min(4000, 300 * 2 ** attempt));
      }
    }
  }

  // ---- Web Push: the server's key and this browser's subscription -------------------
  /** The VAPID application server key (base64url), or null when the server sends no pushes (404). */
  async function getPushKey() {
    try {
      return (await api('/api/push/key')).public_key || null;
    } catch (err) {
      if (err instanceof AlfredApiError && err.status === 404) return null;
      throw err;
    }
  }
  /** Store a PushSubscription (or its toJSON()) for the signed-in user. */
  const savePushSubscription = (sub) => api('/api/push/subscriptions', {
    method: 'POST', body: typeof sub.toJSON === 'function' ? sub.toJSON() : sub,
  });
  /** Forget a subscription by its endpoint. */
  const deletePushSubscription = (endpoint) => api(
    `/api/push/subscriptions?endpoint=${encodeURIComponent(endpoint)}`, { method: 'DELETE' },
  );

  const cancelJob = (id) => api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' })
    .catch((err) => {
      if (err instanceof AlfredApiError && err.status === 409) return null; // already over
      throw err;
    });
  // The latest page of a conversation (oldest first); `next_cursor` reads the page before it.
  /** GET /api/jobs/{id}/timeline: attempts, spans, waits, tokens and cost, folded from the log. */
  const getTimeline = (id) => api(`/api/jobs/${encodeURIComponent(id)}/timeline`);
  const getConversation = (id, { limit, cursor } = {}) => {
    const q = new URLSearchParams();
    if (limit) q.set('limit', String(limit));
    if (cursor) q.set('cursor', cursor);
    const query = q.toString();
    return api(`/api/conversations/${encodeURIComponent(id)}${query ? `?${query}` : ''}`);
  };

  /** The caller's conversations, most recently active first: `{conversations, next_cursor}`. */
  const listConversations = ({ limit = 50, cursor } = {}) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (cursor) q.set('cursor', cursor);
    return api(`/api/conversations?${q}`);
  };

  /**
   * A job's view folded from its whole log, read once (no stream held): for a job that has ended,
   * to show it as the device that sent it did (its error, its cancel, its question's answer).
   */
  async function readView(jobId) {
    let view = emptyView(jobId);
    for (let pages = 0; pages < 50; pages += 1) {
      const page = await api(`/api/jobs/${encodeURIComponent(jobId)}/events?after=${view.lastSeq}&wait=0`);
      const events = (page.events || []).filter((ev) => ev.seq > view.lastSeq).sort((a, b) => a.seq - b.seq);
      for (const ev of events) view = applyEvent(view, ev);
      if (!events.length || isTerminal(view.status)) break;
    }
    return view;
  }

  // ---- watch -------------------------------------------------------------------------
  class Watcher {
    constructor(job, handlers) {
      this.jobId = job.job_id;
      this.job = job;
      this.handlers = handlers || {};
      const rec = readRecord(this.jobId);
      // Resume from what this device already showed: its seq and the view folded so far.
      this.view = rec?.view && rec.view.lastSeq ? rec.view : emptyView(this.jobId, job.status);
      this.seq = this.view.lastSeq || 0;
      this.mode = useSse ? 'sse' : 'poll';
      this.failures = 0;
      this.sseFailures = 0;
      this.stopped = false;
      this.finished = false;
      this.es = null;
      this.abort = null;
      this.timer = null;
      this.state = 'connecting';
      writeRecord(this.jobId, {
        conversationId: job.conversation_id, status: this.view.status, active: true,
        view: this.view, seq: this.seq,
      });
      this.done = new Promise((resolve) => { this.resolveDone = resolve; });
    }

    setState(s) {
      if (this.state === s) return;
      this.state = s;
      this.handlers.onConnection?.(s, { mode: this.mode, view: this.view });
    }

    start() {
      this.handlers.onUpdate?.(this.view, null);
      this.connect(false);
    }

    /** Drop the current connection and open a new one now (visible again, back online). */
    reconnectNow() {
      if (this.stopped || this.finished) return;
      this.failures = 0;
      this.connect(true);
    }

    stop() {
      this.stopped = true;
      this.closeTransport();
      watchers.delete(this.jobId);
    }

    closeTransport() {
      clearTimeout(this.timer);
      this.timer = null;
      if (this.es) { this.es.close(); this.es = null; }
      if (this.abort) { this.abort.abort(); this.abort = null; }
    }

    scheduleRetry() {
      if (this.stopped || this.finished) return;
      this.closeTransport();
      this.failures += 1;
      const offline = globalThis.navigator && globalThis.navigator.onLine === false;
      this.setState(offline ? 'offline' : 'reconnecting');
      // Backoff with jitter: 0.5 s, 1 s, 2 s ... 30 s. `online`/`visible` cut it short.
      const base = Math.min(30000, 500 * 2 ** Math.min(6, this.failures - 1));
      const delay = offline ? Math.max(base, 5000) : base;
      this.timer = setTimeout(() => this.connect(true), delay * (0.8 + Math.random() * 0.4));
    }

    async connect(refresh) {
      if (this.stopped || this.finished) return;
      this.closeTransport();
      const abort = new AbortController();
      this.abort = abort;
      this.setState('connecting');
      if (refresh || !this.job.links?.stream) {
        // A fresh job object: a fresh stream token, and the truth about whether it is over.
        try {
          this.job = await getJob(this.jobId);
        } catch (err) {
          if (abort.signal.aborted) return;
          if (err instanceof AlfredApiError && err.status === 404) return this.gone();
          if (err instanceof AlfredApiError && err.status === 401) this.handlers.onAuthError?.(err);
          return this.scheduleRetry();
        }
        if (abort.signal.aborted || this.stopped) return;
        // Still running while the user looks at it: it will not have "finished while away".
        if (!isTerminal(this.job.status) && (!doc || doc.visibilityState !== 'hidden')) {
          writeRecord(this.jobId, { away: false });
        }
        this.handlers.onJob?.(this.job, this.view);
      }
      if (this.mode === 'sse' && this.job.links?.stream) this.openSse();
      else this.poll(abort);
    }

    openSse() {
      const url = new URL(absolute(this.job.links.stream), globalThis.location?.href);
      url.searchParams.set('after', String(this.seq));
      const es = new EventSource(url.toString());
      this.es = es;
      let opened = false;
      const onFrame = (msg) => {
        if (this.es !== es) return;
        let ev;
        try { ev = JSON.parse(msg.data); } catch { return; }
        this.failures = 0;
        this.sseFailures = 0;
        this.handle(ev);
      };
      es.onopen = () => {
        opened = true;
        this.failures = 0;
        this.setState('live');
      };
      // The server names each frame by its type; listen to every type of the contract and to
      // unnamed messages, and dedupe by seq (each event handled once whatever arrives twice).
      for (const t of ['status', 'phase', 'plan', 'step', 'delta', 'resumed', 'input_required', 'input_received',
        'steered', 'complete', 'failed', 'cancelled']) {
        es.addEventListener(t, onFrame);
      }
      es.onmessage = onFrame;
      es.onerror = () => {
        if (this.es !== es || this.finished) return;
        if (!opened) {
          // Never opened: the stream endpoint may be missing or blocked (proxy, expired token).
          // After two such failures in a row, fall back to long-poll for this job.
          this.sseFailures += 1;
          if (this.sseFailures >= 2) this.mode = 'poll';
        }
        this.scheduleRetry();
      };
    }

    async poll(abort) {
      this.setState('live');
      while (!this.stopped && !this.finished && this.abort === abort) {
        let page;
        try {
          page = await api(`/api/jobs/${encodeURIComponent(this.jobId)}/events?after=${this.seq}&wait=${pollWait}`,
            { signal: abort.signal });
        } catch (err) {
          if (abort.signal.aborted || err?.name === 'AbortError') return;
          if (err instanceof AlfredApiError && err.status === 404) return this.gone();
          return this.scheduleRetry();
        }
        if (this.abort !== abort) return;
        this.failures = 0;
        for (const ev of page.events || []) this.handle(ev);
        if (page.done && !this.finished) {
          // Done but the terminal event was not in this page (should not happen): ask once more.
          if (!(page.events || []).length) return this.gone();
        }
      }
    }

    handle(ev) {
      if (!ev || typeof ev.seq !== 'number' || ev.seq <= this.seq || this.finished) return; // seen
      this.seq = ev.seq;
      this.view = applyEvent(this.view, ev);
      writeRecord(this.jobId, { view: this.view, seq: this.seq, status: this.view.status });
      this.handlers.onEvent?.(ev, this.view);
      this.handlers.onUpdate?.(this.view, ev);
      if (TERMINAL_EVENTS[ev.type]) this.finish();
    }

    finish() {
      this.finished = true;
      this.closeTransport();
      watchers.delete(this.jobId);
      const rec = readRecord(this.jobId) || {};
      const hidden = doc && doc.visibilityState === 'hidden';
      const whileAway = Boolean(rec.away || hidden);
      writeRecord(this.jobId, { active: false, away: false, finishedAway: whileAway, status: this.view.status });
      this.setState('done');
      this.handlers.onDone?.(this.view, { whileAway });
      this.resolveDone(this.view);
    }

    gone() {
      // 404: expired by retention, or not this user's. Nothing more to show.
      this.finished = true;
      this.closeTransport();
      watchers.delete(this.jobId);
      writeRecord(this.jobId, { active: false, away: false, gone: true });
      this.setState('gone');
      this.handlers.onGone?.(this.view);
      this.resolveDone(this.view);
    }
  }

  /** Watch a job until its terminal event. Returns a handle (stop, reconnectNow, done). */
  function watchJob(job, handlers = {}) {
    const existing = watchers.get(job.job_id);
    if (existing) return existing;
    const w = new Watcher(job, handlers);
    watchers.set(job.job_id, w);
    w.start();
    return w;
  }

  /**
   * On page load: resume watching every job this device saw active (marking them "away", so one
   * that ended meanwhile reports whileAway) and every active job of the user from the server.
   * @returns the jobs being watched
   */
  async function resumeActiveJobs(handlersFor) {
    prune();
    const resumed = [];
    const local = allRecords().filter((r) => r.active && !r.gone);
    for (const r of local) writeRecord(r.jobId, { away: true });
    let serverActive = [];
    try {
      serverActive = (await listJobs({ status: 'active', limit: 50 })).jobs || [];
    } catch (err) {
      if (err instanceof AlfredApiError && err.status === 401) throw err;
      // offline: watch the local ones anyway; watchers retry by themselves
    }
    const seen = new Set();
    for (const job of serverActive) {
      seen.add(job.job_id);
      // Still running: the user is back and sees it working, so it is not "finished while away".
      writeRecord(job.job_id, { away: false });
      resumed.push(watchJob(job, handlersFor(job, readRecord(job.job_id))));
    }
    for (const r of local) {
      if (seen.has(r.jobId)) continue;
      const stub = { job_id: r.jobId, status: r.status || 'running', conversation_id: r.conversationId, links: null };
      resumed.push(watchJob(stub, handlersFor(stub, readRecord(r.jobId))));
    }
    return resumed;
  }

  /** Jobs that ended while the page was away and the user has not acknowledged yet. */
  function finishedWhileAway() {
    return allRecords().filter((r) => r.finishedAway && !r.gone);
  }

  /** The user saw the "finished while you were away" notice ("Got it"). */
  function acknowledge(jobId) {
    writeRecord(jobId, { finishedAway: false });
  }

  // ---- page lifecycle ----------------------------------------------------------------
  function markAway() {
    for (const w of watchers.values()) writeRecord(w.jobId, { away: true });
  }
  function onVisibility() {
    if (doc.visibilityState === 'hidden') { markAway(); return; }
    // Back: reconnect at once (a sleeping phone's socket may look open but be dead). The
    // reconnect fetches the job first; if it is still running, it was not finished while away.
    for (const w of Array.from(watchers.values())) w.reconnectNow();
  }
  function onOnline() {
    for (const w of Array.from(watchers.values())) w.reconnectNow();
  }
  function onOffline() {
    // The socket is most likely dead (or about to be); drop it and wait for `online`, with a
    // slow retry as well in case the browser's idea of "offline" is wrong.
    for (const w of Array.from(watchers.values())) w.scheduleRetry();
  }
  if (doc && win && options.lifecycle !== false) {
    doc.addEventListener('visibilitychange', onVisibility);
    win.addEventListener('pagehide', markAway);
    win.addEventListener('online', onOnline);
    win.addEventListener('offline', onOffline);
  }

  function close() {
    for (const w of Array.from(watchers.values())) w.stop();
    if (doc && win && options.lifecycle !== false) {
      doc.removeEventListener('visibilitychange', onVisibility);
      win.removeEventListener('pagehide', markAway);
      win.removeEventListener('online', onOnline);
      win.removeEventListener('offline', onOffline);
    }
  }

  return {
    submitChat, watchJob, resumeActiveJobs, getJob, listJobs, cancelJob, getConversation, getTimeline, answerInput,
    listConversations, readView,
    getPushKey, savePushSubscription, deletePushSubscription,
    draftKey, finishedWhileAway, acknowledge, records: allRecords, record: readRecord, close,
    watching: () => Array.from(watchers.keys()),
  };
}
