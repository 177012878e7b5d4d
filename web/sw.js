// sw.js — Alfred's service worker: shows the Web Push notifications the job API sends when a job
// ends or asks a question, and opens the page on that job when one is tapped. It caches nothing and
// handles no fetch: the page always comes from the network. Registered by app.js; docs/web.md.
//
// A push payload (decrypted by the browser) is JSON {job_id, status, seq, title, body}; status is
// the job's after the event: complete, failed, cancelled, or waiting (Alfred needs an answer). What
// a lock screen may show is the server's choice (ALFRED_PUSH_PREVIEW): by default a title and no
// body, so no reply or question text; the notification then says "Tap to see it".

const TITLES = {
  complete: 'Alfred finished',
  waiting: 'Alfred has a question',
  failed: 'Alfred could not finish',
  cancelled: 'Alfred stopped',
};

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

function payloadOf(event) {
  if (!event.data) return {};
  try {
    const p = event.data.json();
    return p && typeof p === 'object' ? p : {};
  } catch {
    return { body: event.data.text() };
  }
}

/** The notification of one push: its title ("Alfred finished", "Alfred has a question") over its
 * body (empty by default; the start of the reply or the question under ALFRED_PUSH_PREVIEW=full). */
function notificationOf(p) {
  const jobId = typeof p.job_id === 'string' ? p.job_id : null;
  const title = String(p.title || TITLES[p.status] || 'Alfred');
  const body = String(p.body || '');
  return {
    title,
    options: {
      body: body || (p.status === 'waiting' ? 'Tap to answer.' : 'Tap to see it.'),
      // One notification per job: its question, then its result, replace each other.
      tag: jobId ? `alfred-job-${jobId}` : 'alfred',
      renotify: true,
      requireInteraction: p.status === 'waiting',
      data: { jobId, status: p.status || null, seq: typeof p.seq === 'number' ? p.seq : null },
    },
  };
}

self.addEventListener('push', (event) => {
  const { title, options } = notificationOf(payloadOf(event));
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const jobId = event.notification.data?.jobId || null;
  const scope = self.registration.scope;
  const url = new URL(jobId ? `./#job=${encodeURIComponent(jobId)}` : './', scope).href;
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    const open = windows.find((c) => c.url.startsWith(scope));
    if (open) {
      // The page is open (maybe in the background): bring it forward and show the job there.
      await open.focus();
      open.postMessage({ type: 'alfred:open-job', jobId });
      return;
    }
    await self.clients.openWindow(url);
  })());
});
