// Types of alfred-client.js (the browser client of alfred-jobs). See docs/web.md.

/** `waiting`: the job asked the user (an `input_required` event) and waits for the answer; active. */
export type JobStatus = 'pending' | 'running' | 'waiting' | 'complete' | 'failed' | 'cancelled';

export interface ApiErrorBody {
  code: string;
  message: string;
  /** conversation_busy: the conversation's active job. */
  job_id?: string;
}

export interface JobLinks {
  self: string;
  events: string;
  cancel: string;
  /** POST `{input_id, answer}` here to answer the job's question. */
  input?: string;
  /** SSE URL carrying a short-lived, job-scoped `token` query parameter (EventSource cannot send headers). */
  stream: string;
}

export interface Progress {
  phase: 'think' | 'act' | 'reply' | null;
  completed_steps: number;
  total_steps: number | null;
  label: string | null;
}

/** The job object of `GET /api/jobs/{id}` and `POST /api/chat`. */
export interface Job {
  job_id: string;
  status: JobStatus;
  conversation_id: string;
  created_at: string;
  started_at: string | null;
  completed_at: string | null;
  attempts: number;
  last_seq: number;
  progress: Progress;
  cancel_requested?: boolean;
  output?: { reply: string; [k: string]: unknown };
  error?: ApiErrorBody;
  links?: JobLinks | null;
  /** Only on the answer to a `multitask: "steer"` submit: true, the message joined this job (the
   * conversation's job under way); false, it became this new job (that one was replying or ended). */
  steered?: boolean;
}

export type EventType =
  | 'status' | 'phase' | 'plan' | 'step' | 'delta' | 'resumed' | 'input_required' | 'input_received'
  | 'steered' | 'complete' | 'failed' | 'cancelled';

export type QuestionKind = 'confirm' | 'choice' | 'text';

/** The data of an `input_required` event: Alfred asks, the job waits (until `expires_at`). */
export interface InputRequiredData {
  input_id: string;
  prompt: string;
  kind: QuestionKind;
  options?: string[] | null;
  expires_at: string;
}

/** A question waiting for the user's answer, from the job's `input_required` event. */
export interface QuestionView {
  inputId: string;
  prompt: string;
  /** confirm: answer true/false; choice: one of `options`; text: any non-blank text. */
  kind: QuestionKind;
  options: string[] | null;
  /** ISO time: unanswered by then, the job fails with `input_timeout`. */
  expiresAt: string | null;
  /** The seq of the event that asked. */
  seq: number;
}

/** One event of a job's ordered log (seq 1..N, no gaps). */
export interface JobEvent<D = Record<string, any>> {
  seq: number;
  type: EventType | string;
  at: string;
  attempt: number;
  data: D;
}

export interface StepView {
  index: number;
  label: string;
  status: 'pending' | 'started' | 'completed';
}

/** A job as this device has seen it: the fold of its events up to `lastSeq`. */
export interface JobView {
  jobId: string;
  status: JobStatus;
  phase: 'think' | 'act' | 'reply' | null;
  attempt: number;
  totalSteps: number | null;
  /** The plan, each step once, in order. */
  steps: StepView[];
  /** The step running now, if any. */
  currentStep: number | null;
  completedSteps: number;
  label: string | null;
  /** The reply so far (deltas appended; a `replace` delta replaces it). */
  reply: string;
  error: ApiErrorBody | null;
  /** Set while an attempt failed and the job waits to be retried. */
  retry: { inSeconds: number; error: ApiErrorBody | null; at: string } | null;
  lastSeq: number;
  /** Cancelled: 'interrupted' when a later message of the conversation (multitask "interrupt") ended it. */
  cancelReason: 'interrupted' | null;
  /** Cancelled by an interrupt: the job that interrupted it. */
  cancelledBy: string | null;
  /** Cancelled during its reply: `reply` is the reply so far (`partial_reply`), kept and shown "Stopped". */
  stopped: boolean;
  /** The open question (status `waiting`); null once answered on any device (`input_received`) or ended. */
  question: QuestionView | null;
  /** The last answer taken (from `input_received`, whichever device sent it). */
  answered: { inputId: string; answer: boolean | string; prompt: string | null; kind: QuestionKind | null } | null;
  /** Messages the user added to this job while it ran (`steered` events), in order. */
  steers: { messageId: string; text: string; at: string }[];
}

/** Tokens a model was billed for (the sum of a part's calls). */
export interface Usage {
  input_tokens: number; output_tokens: number; cache_read_tokens: number; cache_write_tokens: number; model: string;
}

/** A job's timeline, folded from its log by the server. */
export interface Timeline {
  job_id: string;
  status: JobStatus;
  attempts: { attempt: number; started_at: string; ended_at: string | null;
    ended: 'completed' | 'crashed' | 'handed_on' | 'fenced' | 'waiting' | 'cancelled' | 'failed' | null }[];
  spans: { kind: 'queued' | 'think' | 'step' | 'waiting' | 'backoff' | 'reply'; index?: number; label?: string;
    attempt: number; started_at: string; ended_at: string | null; duration_s: number; usage?: Usage;
    cost_usd?: number }[];
  cancel?: { reason: string; by?: string };
  totals: { wall_s: number; queued_s: number; waiting_s: number; usage: Usage; cost_usd: number };
}

/** What the client remembers per job in storage (localStorage by default). */
export interface JobRecord {
  jobId: string;
  message?: string;
  conversationId?: string;
  status?: JobStatus;
  /** Still to be watched (not terminal when last seen). */
  active?: boolean;
  /** Active when the page was hidden or closed. */
  away?: boolean;
  /** Ended while away and not acknowledged ("Got it") yet. */
  finishedAway?: boolean;
  /** 404 from the API: expired or not this user's. */
  gone?: boolean;
  idempotencyKey?: string;
  /** Messages this device steered into the job (their Idempotency-Keys and texts). */
  steers?: { key: string; message: string }[];
  seq?: number;
  view?: JobView;
  createdAt: number;
  updatedAt: number;
}

export type ConnectionState = 'connecting' | 'live' | 'reconnecting' | 'offline' | 'done' | 'gone';
export type Transport = 'sse' | 'poll';

export interface WatchHandlers {
  /** Every new event, once, in seq order (duplicates and replays already dropped). */
  onEvent?(event: JobEvent, view: JobView): void;
  /** After every change (and once at start with the remembered view). */
  onUpdate?(view: JobView, event: JobEvent | null): void;
  /** After the terminal event. `whileAway`: it ended while the page was hidden or closed. */
  onDone?(view: JobView, info: { whileAway: boolean }): void;
  /** The job is gone (404: expired or not this user's). */
  onGone?(view: JobView): void;
  onConnection?(state: ConnectionState, info: { mode: Transport; view: JobView }): void;
  /** A fresh job object was fetched (on every reconnect). */
  onJob?(job: Job, view: JobView): void;
  /** The API answered 401 (token expired or invalid). */
  onAuthError?(error: AlfredApiError): void;
  /** This device steered a message into the watched job (`submitChat` with `multitask: "steer"`
   * answered `steered: true`); its `steered` event follows in `onEvent` once the runner records it. */
  onSteered?(outcome: { steered: true; message: string; job: Job }, view: JobView): void;
}

export interface Watcher {
  readonly jobId: string;
  readonly view: JobView;
  readonly mode: Transport;
  readonly state: ConnectionState;
  /** Resolves with the final view after the terminal event (or when the job is gone). */
  readonly done: Promise<JobView>;
  /** Drop the connection and reconnect from the last seq now. */
  reconnectNow(): void;
  /** Stop watching (the job goes on on the server). */
  stop(): void;
}

export interface SubmitOptions {
  conversationId?: string | null;
  /** Same key and same body → the same job. Defaults to a new random key (no dedupe across calls). */
  idempotencyKey?: string;
  /** Retries on network errors, 429 (but too_many_jobs) and 5xx, with the same key. Default 3. */
  retries?: number;
  /** If the conversation has a job under way: wait for it (the server's default), refuse
   * (409 conversation_busy, `AlfredApiError.jobId`), or stop it (it ends cancelled, `cancelReason: 'interrupted'`). */
  multitask?: 'enqueue' | 'reject' | 'interrupt' | 'steer';
  signal?: AbortSignal;
}

export interface DraftKey {
  /** The key for this text: the same until `sent()`, a new one when the text changes. */
  keyFor(text: string): string;
  /** The server accepted the draft; the next draft gets a new key. With `text`: only if the
   * stored draft is still that text (another draft may have been keyed meanwhile). */
  sent(text?: string): void;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
  key(index: number): string | null;
  readonly length: number;
}

export interface ClientOptions {
  /** API origin, e.g. "https://api.example.com". Default "" (same origin). */
  baseUrl?: string;
  /** The bearer token for API calls (may be async, e.g. refresh a Cognito session). */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Storage key scope, normally the user id, so users on one device never share records. */
  scope?: string;
  /** Storage key prefix. Default "alfred". */
  namespace?: string;
  /** Default localStorage (an in-memory map when unavailable). */
  storage?: StorageLike;
  fetch?: typeof fetch;
  /** Use EventSource (default true when available); false: long-poll only. */
  sse?: boolean;
  /** Long-poll wait in seconds (≤ 20). Default 20. */
  pollWaitSeconds?: number;
  /** Listen to visibilitychange / pagehide / online / offline. Default true. */
  lifecycle?: boolean;
}

export interface AlfredClient {
  submitChat(message: string, options?: SubmitOptions): Promise<Job>;
  watchJob(job: Job | { job_id: string; status?: JobStatus; conversation_id?: string; links?: JobLinks | null },
    handlers?: WatchHandlers): Watcher;
  /** On page load: watch this device's remembered active jobs and the user's active jobs on the server. */
  resumeActiveJobs(handlersFor: (job: Job, record: JobRecord | null) => WatchHandlers): Promise<Watcher[]>;
  getJob(jobId: string): Promise<Job>;
  /** `GET /api/jobs`: the user's jobs, newest first; with `conversationId`, only that conversation's
   * (a cursor goes on the list it came from). */
  listJobs(query?: { status?: JobStatus | 'active'; limit?: number; cursor?: string; conversationId?: string }): Promise<{ jobs: Job[]; next_cursor: string | null }>;
  /** 202/200 → the job; 409 (already finished) → null. */
  cancelJob(jobId: string): Promise<Job | null>;
  /** The newest messages of a conversation, oldest first (a page: `limit` 1..100, default 100);
   * `next_cursor` (null on the oldest page) as `cursor` reads the page before. */
  getConversation(conversationId: string, page?: { limit?: number; cursor?: string }): Promise<{
    conversation_id: string; next_cursor: string | null;
    messages: { role: 'user' | 'assistant'; text: string; job_id: string; at: string; stopped?: true }[] }>;
  /** `GET /api/jobs/{id}/timeline`: the job's attempts, spans, waits, tokens and cost (SPEC "A job's timeline"). */
  getTimeline(jobId: string): Promise<Timeline>;
  /** `GET /api/conversations`: the caller's conversations, most recently active first. */
  listConversations(page?: { limit?: number; cursor?: string }): Promise<{
    conversations: { conversation_id: string; updated_at: string; title: string }[]; next_cursor: string | null }>;
  /** A job's view folded from its whole log, read once (`GET .../events?wait=0`, no stream held). */
  readView(jobId: string): Promise<JobView>;
  /** Answer the job's question at `links.input` (or `/api/jobs/{id}/input`). `taken`: true on 202 (the job
   * goes on), false on 200 (the same answer was already taken). Rejects with an AlfredApiError: 409
   * `input_answered` (answered otherwise, e.g. on another device), `stale_input`, `input_expired`,
   * `job_finished`; 400 `invalid_answer`. Network errors and 5xx are retried (the same answer again is a 200). */
  answerInput(job: Job | string, inputId: string, answer: boolean | string): Promise<{ taken: boolean; job: Job }>;
  /** `GET /api/push/key`: the VAPID application server key (base64url), or null when the server sends no pushes (404). */
  getPushKey(): Promise<string | null>;
  /** `POST /api/push/subscriptions` with the browser's PushSubscription (or its toJSON()). */
  savePushSubscription(subscription: PushSubscription | PushSubscriptionJSON): Promise<{ endpoint: string }>;
  /** `DELETE /api/push/subscriptions?endpoint=...`. */
  deletePushSubscription(endpoint: string): Promise<null>;
  draftKey(name?: string): DraftKey;
  /** Jobs that ended while away and are not acknowledged yet. */
  finishedWhileAway(): JobRecord[];
  acknowledge(jobId: string): void;
  records(): JobRecord[];
  record(jobId: string): JobRecord | null;
  watching(): string[];
  /** Stop all watchers and remove the page listeners. */
  close(): void;
}

export declare class AlfredApiError extends Error {
  /** HTTP status, 0 for a network failure. */
  readonly status: number;
  readonly code: string;
  /** Network, 429 or 5xx: the same request may succeed later. */
  readonly retryable: boolean;
  /** The Retry-After header in seconds (429, 503), or null. */
  readonly retryAfter: number | null;
  /** 409 conversation_busy: the conversation's active job; else null. */
  readonly jobId: string | null;
  constructor(status: number, code: string, message: string,
    extra?: { retryAfter?: number | null; jobId?: string | null });
}

export declare function createAlfredClient(options?: ClientOptions): AlfredClient;
export declare function applyEvent(view: JobView, event: JobEvent): JobView;
export declare function emptyView(jobId: string, status?: JobStatus): JobView;
export declare function stepOf(view: JobView): { k: number; n: number } | null;
export declare function isTerminal(status: string): boolean;
export declare function newId(): string;
