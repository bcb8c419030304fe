// The REST client of the UI: every call goes to /api/v1 on this origin, authenticated by the
// session cookie (with its CSRF token on every request) or, as a fallback, by an API key kept
// in sessionStorage and sent as `Authorization: Bearer`. Also file uploads with progress (through
// XMLHttpRequest, the one browser API that reports how much of a body was sent) and the live
// event stream (SSE read through fetch, so that it carries the same authentication as every
// other call).

const KEY_STORE = 'corral.apiKey';

export const session = {
  user: null, // {id, username, display_name, admin, grants} when signed in with a password
  csrf: null,
  // {admin, grants} of whoever is signed in (password or API key), from /auth/me; null when
  // unknown. Only for showing the controls the caller's role allows: the server decides.
  access: null,
  apiKey: sessionStorage.getItem(KEY_STORE),
  get signedIn() { return Boolean(this.user || this.apiKey); },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
  get missing() { return this.status === 404 && this.code === 'no_route'; }
}

const listeners = new Set();
/** Called with no argument when the server says the session is gone (401). */
export function onUnauthorized(f) { listeners.add(f); }

function headers(extra) {
  const h = { Accept: 'application/json', ...extra };
  if (session.apiKey) h.Authorization = `Bearer ${session.apiKey}`;
  if (session.csrf) h['X-CSRF-Token'] = session.csrf;
  return h;
}

export async function api(method, path, body, opts = {}) {
  const init = { method, headers: headers(), credentials: 'same-origin', signal: opts.signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(`/api/v1${path}`, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'The server cannot be reached.');
  }
  if (r.status === 204) return null;
  return answer(r.status, await r.text(), r.statusText, opts);
}

/** The parsed body of an answer, or the ApiError it carries (`{"error": {code, message}}`). */
function answer(status, text, statusText, opts = {}) {
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (status < 200 || status > 299) {
    const err = data && data.error ? data.error : {};
    const e = new ApiError(status, err.code, err.message || text || statusText);
    if (status === 401 && !opts.quiet401) listeners.forEach((f) => f());
    throw e;
  }
  return data;
}

/**
 * POSTs `file` (a File or Blob) as the raw body of `/api/v1${path}`. The File object itself is
 * sent, so the browser streams it from disk: it is never read into memory here.
 * `onProgress(sent, total)` follows the sending; `signal` (an AbortSignal) cancels it, which
 * rejects with an AbortError. Resolves with the parsed answer; rejects with an ApiError, whose
 * status is 0 when the connection ended before an answer came.
 */
export function upload(path, file, { onProgress, signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api/v1${path}`);
    for (const [k, v] of Object.entries(headers({ 'Content-Type': 'application/octet-stream' }))) xhr.setRequestHeader(k, v);
    if (onProgress) {
      xhr.upload.addEventListener('progress', (ev) => onProgress(ev.loaded, ev.lengthComputable ? ev.total : file.size));
    }
    xhr.addEventListener('load', () => {
      try { resolve(answer(xhr.status, xhr.responseText, xhr.statusText)); } catch (e) { reject(e); }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network', 'The upload broke off: the connection closed before the server answered.')));
    xhr.addEventListener('timeout', () => reject(new ApiError(0, 'network', 'The upload timed out.')));
    xhr.addEventListener('abort', () => reject(new DOMException('The upload was cancelled.', 'AbortError')));
    if (signal) {
      if (signal.aborted) { reject(new DOMException('The upload was cancelled.', 'AbortError')); return; }
      signal.addEventListener('abort', () => xhr.abort(), { once: true });
    }
    xhr.send(file);
  });
}

/**
 * Saves what `GET /api/v1${path}` returns as a file. With a session cookie the browser streams
 * it straight to disk through a link; with an API key (which must travel in a header) it is
 * fetched and saved from memory. The answer's Content-Disposition names the file
 * (`fallbackName` when it does not).
 */
export async function downloadFile(path, fallbackName) {
  const save = (href, name) => {
    const a = document.createElement('a');
    a.href = href;
    a.download = name || '';
    document.body.append(a);
    a.click();
    a.remove();
  };
  if (!session.apiKey) { save(`/api/v1${path}`); return; }
  const r = await fetch(`/api/v1${path}`, { headers: headers(), credentials: 'same-origin' });
  if (!r.ok) answer(r.status, await r.text(), r.statusText);
  const name = /filename="([^"]+)"/.exec(r.headers.get('Content-Disposition') || '')?.[1];
  const url = URL.createObjectURL(await r.blob());
  save(url, name || fallbackName);
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/**
 * Downloads an online backup of the server (server administrators). With a session cookie the
 * browser streams it straight to disk through a link; with an API key (which must travel in a
 * header) it is fetched and saved from memory.
 */
export async function downloadBackup() {
  const save = (href, name) => {
    const a = document.createElement('a');
    a.href = href;
    a.download = name || '';
    document.body.append(a);
    a.click();
    a.remove();
  };
  if (!session.apiKey) { save('/api/v1/backup'); return; }
  const r = await fetch('/api/v1/backup', { headers: headers(), credentials: 'same-origin' });
  if (!r.ok) throw new ApiError(r.status, 'backup_failed', `The backup failed (${r.status}).`);
  const name = /filename="([^"]+)"/.exec(r.headers.get('Content-Disposition') || '')?.[1];
  const url = URL.createObjectURL(await r.blob());
  save(url, name || 'corral.backup.tar');
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

export const get = (p, o) => api('GET', p, undefined, o);
export const post = (p, b, o) => api('POST', p, b === undefined ? {} : b, o);
export const put = (p, b, o) => api('PUT', p, b, o);
export const patch = (p, b, o) => api('PATCH', p, b, o);
export const del = (p, o) => api('DELETE', p, undefined, o);

/** Builds a query string from an object, leaving out empty values. */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') u.set(k, String(v));
  }
  const s = u.toString();
  return s ? `?${s}` : '';
}

// ---- signing in and out ----

function setUser(body) {
  session.user = body.user;
  session.csrf = body.csrf_token || null;
  setAccess(body.user);
}

function setAccess(user) {
  session.access = user ? { admin: Boolean(user.admin), grants: Array.isArray(user.grants) ? user.grants : [] } : null;
}

/**
 * Reads the caller's roles again (an admin may have changed them since the sign-in); keeps
 * what was known when that fails.
 */
export async function refreshAccess() {
  try {
    const me = await api('GET', '/auth/me', undefined, { quiet401: true });
    if (!me || !me.user) return;
    setAccess(me.user);
    if (session.user) session.user = { ...session.user, ...me.user };
  } catch { /* the page's own requests report the problem */ }
}

export async function login(username, password) {
  setUser(await api('POST', '/auth/login', { username, password }, { quiet401: true }));
}

/** Whether any web UI user exists yet (no credentials needed). */
export async function authStatus() {
  return api('GET', '/auth/status', undefined, { quiet401: true });
}

export async function setup(token, username, password) {
  setUser(await api('POST', '/auth/setup', { token, username, password }, { quiet401: true }));
}

/** Checks an API key by reading one workspace with it; keeps it for this tab only. */
export async function useApiKey(key) {
  session.apiKey = key.trim();
  try {
    await api('GET', '/workspaces?limit=1', undefined, { quiet401: true });
  } catch (e) {
    session.apiKey = null;
    throw e;
  }
  sessionStorage.setItem(KEY_STORE, session.apiKey);
  await refreshAccess();
}

/** Restores the session on load: the stored API key, or the session cookie through /auth/me. */
export async function restore() {
  if (session.apiKey) {
    try {
      await api('GET', '/workspaces?limit=1', undefined, { quiet401: true });
      await refreshAccess();
      return true;
    } catch (e) {
      if (e.status !== 401) throw e;
      session.apiKey = null;
      sessionStorage.removeItem(KEY_STORE);
    }
  }
  try {
    setUser(await api('GET', '/auth/me', undefined, { quiet401: true }));
    return true;
  } catch (e) {
    if (e.status === 401 || e.status === 404) return false;
    throw e;
  }
}

export async function logout() {
  if (session.user) {
    try { await api('POST', '/auth/logout', {}, { quiet401: true }); } catch { /* gone already */ }
  }
  session.user = null;
  session.csrf = null;
  session.apiKey = null;
  session.access = null;
  sessionStorage.removeItem(KEY_STORE);
}

/** Whether the caller is a server admin; null when unknown. */
export function isServerAdmin() {
  return session.access ? session.access.admin : null;
}

export function whoAmI() {
  if (session.user) return session.user.display_name || session.user.username;
  if (session.apiKey) return 'API key';
  return '';
}

// ---- live events ----

/**
 * Follows `GET /api/v1/events` with the given filter and calls `onEvent(kind, data)` for each
 * event. Reconnects after a pause when the stream ends; `onState(connected)` reports the link.
 * Returns a function that stops it.
 */
export function events(params, onEvent, onState = () => {}) {
  const ctl = new AbortController();
  let stopped = false;
  let delay = 1000;
  const run = async () => {
    while (!stopped) {
      try {
        const r = await fetch(`/api/v1/events${qs(params)}`, {
          headers: headers({ Accept: 'text/event-stream' }),
          credentials: 'same-origin',
          signal: ctl.signal,
          cache: 'no-store',
        });
        if (r.status === 401) { listeners.forEach((f) => f()); return; }
        if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
        onState(true);
        delay = 1000;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, '\n');
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let kind = 'message';
            const data = [];
            for (const line of block.split('\n')) {
              if (line.startsWith('event:')) kind = line.slice(6).trim();
              else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
            }
            if (!data.length) continue;
            let parsed = null;
            try { parsed = JSON.parse(data.join('\n')); } catch { parsed = null; }
            try { onEvent(kind, parsed); } catch (e) { console.error(e); }
          }
        }
      } catch (e) {
        if (stopped || e.name === 'AbortError') return;
      }
      onState(false);
      if (stopped) return;
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 15000);
    }
  };
  run();
  return () => { stopped = true; ctl.abort(); };
}
