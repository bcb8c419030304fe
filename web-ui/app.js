// Entry point: the hash router, the page shell (navigation, who is signed in) and the sign-in
// gate. Each page module exports `render(main, ctx)`; `ctx.params` holds the route's path
// parameters and query, and `ctx.cleanup(f)` registers what to stop when the page is left
// (event streams, timers).

import * as api from './api.js';
import { clear, h, errorBox } from './dom.js';
import * as login from './pages/login.js';
// Pages load when first visited: the first load fetches the shell, the sign-in page and the
// page asked for, not every page (each is fetched once; the browser keeps it).
const lazy = (name) => () => import(`./pages/${name}.js`);

const routes = [
  [/^\/$/, lazy('overview'), 'Overview'],
  [/^\/dashboards$/, lazy('dashboards'), 'Dashboards'],
  [/^\/dashboards\/([0-9a-fA-F-]{36})$/, lazy('dashboard'), 'Dashboard'],
  [/^\/fleets$/, lazy('fleets'), 'Workspaces & fleets'],
  [/^\/fleets\/([0-9a-fA-F-]{36})$/, lazy('fleet'), 'Fleet'],
  [/^\/devices$/, lazy('devices'), 'Devices'],
  [/^\/devices\/([0-9a-fA-F-]{36})$/, lazy('device'), 'Device'],
  [/^\/conditions$/, lazy('conditions'), 'Conditions'],
  [/^\/jobs$/, lazy('jobs'), 'Jobs'],
  [/^\/packages$/, lazy('packages'), 'Packages'],
  [/^\/campaigns$/, lazy('campaigns'), 'Campaigns'],
  [/^\/campaigns\/new$/, lazy('campaign-new'), 'New campaign'],
  [/^\/campaigns\/([0-9a-fA-F-]{36})$/, lazy('campaign'), 'Campaign'],
  [/^\/integrations$/, lazy('integrations'), 'Integrations'],
  [/^\/users$/, lazy('users'), 'Users & API keys'],
  [/^\/audit$/, lazy('audit'), 'Audit log'],
  [/^\/export$/, lazy('export'), 'Export data'],
];

let cleanups = [];
let renderSeq = 0;

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = raw.split('?');
  return { path, query: Object.fromEntries(new URLSearchParams(query)) };
}

/** Navigates to `#path` (with an optional query object). */
export function go(path, query) {
  const q = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v != null)).toString() : '';
  const target = `#${path}${q ? `?${q}` : ''}`;
  if (location.hash === target) render();
  else location.hash = target;
}

function shell(signedIn) {
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('session').hidden = !signedIn;
  document.getElementById('menu-toggle').hidden = !signedIn;
  document.getElementById('who').textContent = signedIn ? api.whoAmI() : '';
  // Server-wide pages are for server admins; the server checks anyway, this only tidies the menu.
  const notAdmin = api.isServerAdmin() === false;
  for (const li of document.querySelectorAll('#nav [data-admin-only]')) li.hidden = notAdmin;
  const { path } = parseHash();
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.getAttribute('href').slice(1);
    const current = target === '/' ? path === '/' : path === target || path.startsWith(`${target}/`);
    if (current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

async function render() {
  const seq = ++renderSeq;
  cleanups.forEach((f) => { try { f(); } catch { /* already stopped */ } });
  cleanups = [];
  const main = document.getElementById('main');
  const { path, query } = parseHash();
  const ctx = {
    query,
    params: [],
    cleanup: (f) => cleanups.push(f),
    go,
    current: () => seq === renderSeq,
  };
  if (path === '/login' || path === '/setup') {
    shell(false);
    document.title = 'Sign in · Corral';
    login.render(main, { ...ctx, setup: path === '/setup', done: () => go(query.next || '/') });
    return;
  }
  if (!api.session.signedIn) {
    go('/login', path === '/' ? undefined : { next: path });
    return;
  }
  // The caller's roles, read again on every page: the page shows only the controls they allow.
  await api.refreshAccess();
  if (seq !== renderSeq) return;
  shell(true);
  const nav = document.getElementById('nav');
  if (window.matchMedia('(max-width: 760px)').matches) {
    nav.classList.remove('open');
    document.getElementById('menu-toggle').setAttribute('aria-expanded', 'false');
  }
  const match = routes.find(([re]) => re.test(path));
  if (!match) {
    clear(main, h('h1', { tabindex: '-1' }, 'Not found'), h('p', {}, 'No page here. ', h('a', { href: '#/' }, 'Go to the overview.')));
    main.querySelector('h1').focus();
    return;
  }
  const [re, load, title] = match;
  ctx.params = path.match(re).slice(1);
  document.title = `${title} · Corral`;
  try {
    const page = await load();
    if (seq !== renderSeq) return;
    await page.render(main, ctx);
  } catch (e) {
    if (seq !== renderSeq) return;
    clear(main, h('h1', { tabindex: '-1' }, title), errorBox(e));
  }
  if (seq !== renderSeq) return;
  // Move focus to the new page's heading so keyboard and screen-reader users land on it.
  const heading = main.querySelector('h1');
  if (heading && document.activeElement !== document.body && !main.contains(document.activeElement)) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: true });
  } else if (heading && document.activeElement === document.body) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: true });
  }
}

async function start() {
  api.onUnauthorized(() => {
    api.session.user = null;
    api.session.apiKey = null;
    api.session.access = null;
    sessionStorage.removeItem('corral.apiKey');
    const { path } = parseHash();
    if (path !== '/login' && path !== '/setup') go('/login', { next: path });
  });
  document.getElementById('sign-out').addEventListener('click', async () => {
    await api.logout();
    go('/login');
  });
  const toggle = document.getElementById('menu-toggle');
  toggle.addEventListener('click', () => {
    const nav = document.getElementById('nav');
    const open = !nav.classList.contains('open');
    nav.classList.toggle('open', open);
    toggle.setAttribute('aria-expanded', String(open));
    if (open) nav.querySelector('a').focus();
  });
  document.getElementById('skip-link').addEventListener('click', (ev) => {
    ev.preventDefault();
    document.getElementById('main').focus();
  });
  try {
    await api.restore();
  } catch (e) {
    clear(document.getElementById('main'), errorBox(e));
  }
  window.addEventListener('hashchange', render);
  render();
}

start();
