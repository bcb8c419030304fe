// Small DOM helpers: element building without innerHTML (no markup is ever built from data),
// formatting of times, sizes and values, announcements for screen readers, common widgets, and
// rate limits for handlers (debounce, throttle).

/**
 * h('button', {type: 'button', onclick: f, class: 'x'}, 'text', child...) builds an element.
 * Attributes starting with `on` become listeners; `false`/`null` attributes are left out.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') {
      // The default value too, so that a form reset goes back to it.
      if (tag === 'input') el.defaultValue = v;
      el.value = v;
    }
    else if (k === 'checked') el.checked = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let seq = 0;
/** A unique id for label/field pairs. */
export const uid = (p = 'f') => `${p}-${++seq}`;

/** A labelled form field: `field('Name', h('input', {...}))`. */
export function field(label, control, hint) {
  const id = control.id || uid();
  control.id = id;
  const hintEl = hint ? h('small', { id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: id }, label), control, hintEl);
}

export function select(options, value, attrs = {}) {
  return h('select', attrs, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

/** Milliseconds since the epoch as local date and time. */
export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

export function fmtAgo(ms) {
  if (!ms) return 'never';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function fmtValue(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** A byte count for people: `912 B`, `1.5 KiB`, `3.0 MiB`, `120 MiB`, `2.0 GiB`. */
export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 100 ? 1 : 0)} ${units[i]}`;
}

/** A size for people, with the exact byte count in its title. */
export function sizeEl(n) {
  return h('span', { class: 'size', title: `${Number(n).toLocaleString()} bytes` }, fmtBytes(n));
}

export function timeEl(ms) {
  return ms ? h('time', { datetime: new Date(ms).toISOString(), title: fmtTime(ms) }, fmtAgo(ms)) : '—';
}

/** Polite announcement for screen readers (the page's aria-live region). */
export function announce(text) {
  const live = document.getElementById('live');
  if (!live) return;
  live.textContent = '';
  setTimeout(() => { live.textContent = text; }, 50);
}

let toastTimer;
/** A short message in the corner; errors stay longer. */
export function toast(text, kind = 'info') {
  const el = document.getElementById('toast');
  if (!el) return;
  el.textContent = text;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, kind === 'error' ? 8000 : 4000);
}

export function errorText(e) {
  if (!e) return 'Something went wrong.';
  if (e.status === 0) return e.message;
  if (e.code) return `${e.message} (${e.code})`;
  return e.message || String(e);
}

/** A panel that says an API is not there on this server (yet). */
export function unavailable(what) {
  return h('div', { class: 'notice', role: 'note' },
    h('strong', {}, `${what} is not available on this server.`),
    ' This Corral build does not offer that API yet; the rest of the UI works without it.');
}

export function errorBox(e) {
  return h('div', { class: 'notice error', role: 'alert' }, errorText(e));
}

/**
 * A table with a caption (visually hidden when `hideCaption`), header cells (text, nodes, or
 * ready `th` elements) and rows.
 */
export function table(caption, headers, rows, opts = {}) {
  return h('div', { class: 'table-wrap', tabindex: opts.focusable ? '0' : null, role: opts.focusable ? 'region' : null, 'aria-label': opts.focusable ? caption : null },
    h('table', { class: opts.class || '' },
      h('caption', { class: opts.hideCaption ? 'visually-hidden' : '' }, caption),
      h('thead', {}, h('tr', {}, headers.map((x) => (x instanceof Element && x.tagName === 'TH' ? x : h('th', { scope: 'col' }, x))))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'empty' }, opts.empty || 'Nothing here yet.')))));
}

export function statusBadge(status) {
  return h('span', { class: `badge ${status}` }, status);
}

/** Offers `text` as a file download (e.g. a certificate). */
export function download(filename, text, type = 'application/x-pem-file') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: filename, class: 'visually-hidden' }, filename);
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(url); a.remove(); }, 1000);
}

/** A secret shown once, with a copy button. */
export function secretBox(label, value) {
  const input = h('input', { type: 'text', readonly: true, value, class: 'secret', 'aria-label': label });
  return h('div', { class: 'notice secret-box' },
    h('p', {}, h('strong', {}, label), ' — shown only now; copy it.'),
    h('div', { class: 'row' }, input,
      h('button', { type: 'button', onclick: async () => {
        try { await navigator.clipboard.writeText(value); toast('Copied.'); } catch { input.select(); }
      } }, 'Copy')));
}

/** Runs `f` with the form's submit button disabled; shows errors as a toast. */
export function onSubmit(form, f) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btns = form.querySelectorAll('button[type=submit]');
    btns.forEach((b) => { b.disabled = true; });
    try {
      await f(new FormData(form));
    } catch (e) {
      toast(errorText(e), 'error');
    } finally {
      btns.forEach((b) => { b.disabled = false; });
    }
  });
  return form;
}

/** Calls f after the input has been quiet for `ms`. */
export function debounce(f, ms = 250) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => f(...a), ms); };
}

/**
 * Runs `f` at most once every `ms`: a call when `f` has not run for `ms` runs it at once; calls
 * within the period fold into one run at its end, with the last call's arguments, so the last
 * call is never lost. Unlike `debounce`, a steady stream of calls (devices that send all the
 * time) still runs `f` every `ms`. `.cancel()` drops a pending run (when the page is left).
 */
export function throttle(f, ms) {
  let last = -Infinity;
  let timer = null;
  let args = [];
  const run = () => { timer = null; last = Date.now(); f(...args); };
  const t = (...a) => {
    args = a;
    if (timer) return;
    const wait = last + ms - Date.now();
    if (wait <= 0) run();
    else timer = setTimeout(run, wait);
  };
  t.cancel = () => { clearTimeout(timer); timer = null; };
  return t;
}
