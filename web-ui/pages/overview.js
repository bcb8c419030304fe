// Overview: devices online and offline, message rate, open conditions (a link to them), running
// jobs and the health of integrations, from `GET /api/v1/overview`; refreshed on device, job and
// condition events and every 10 s. Without that endpoint it counts devices from the device listing instead.

import * as api from '../api.js';
import { h, clear, errorBox, table, statusBadge, debounce } from '../dom.js';

function stat(label, value, id, href) {
  return h(href ? 'a' : 'div', { class: 'stat', id, href },
    h('span', { class: 'stat-value' }, value === null || value === undefined ? '—' : String(value)),
    h('span', { class: 'stat-label' }, label));
}

/** The open conditions, linking to the conditions page when the server counts them. */
function conditionsStat(n) {
  if (n === null || n === undefined) return stat('open conditions', null, 'stat-conditions');
  const el = stat('open conditions', n, 'stat-conditions', '#/conditions');
  if (n > 0) el.classList.add('raised');
  return el;
}

async function countDevices(status) {
  // Up to 5 pages of 1000: beyond that the fallback says "5000+".
  let n = 0;
  let cursor;
  for (let i = 0; i < 5; i++) {
    const p = await api.get(`/devices${api.qs({ status, limit: 1000, cursor })}`);
    n += p.items.length;
    if (!p.next_cursor) return String(n);
    cursor = p.next_cursor;
  }
  return `${n}+`;
}

async function load() {
  try {
    return { ...(await api.get('/overview')), full: true };
  } catch (e) {
    if (!e.missing) throw e;
  }
  const [online, offline] = await Promise.all([countDevices('online'), countDevices('offline')]);
  return {
    devices: { online, offline, total: online.endsWith('+') || offline.endsWith('+') ? '—' : Number(online) + Number(offline) },
    messages_per_sec: null,
    open_conditions: null,
    running_jobs: null,
    integrations: null,
    full: false,
  };
}

export async function render(main, ctx) {
  const body = h('div', { id: 'overview-body' }, h('p', {}, 'Loading…'));
  clear(main, h('h1', {}, 'Overview'), body);
  const refresh = async () => {
    let o;
    try {
      o = await load();
    } catch (e) {
      if (ctx.current()) clear(body, errorBox(e));
      return;
    }
    if (!ctx.current()) return;
    // Integration health comes with the integrations API; absent, the section says so.
    const integ = Array.isArray(o.integrations) ? o.integrations : null;
    clear(body,
      h('section', { 'aria-label': 'Summary', class: 'stats' },
        stat('devices', o.devices.total, 'stat-total'),
        stat('online', o.devices.online, 'stat-online'),
        stat('offline', o.devices.offline, 'stat-offline'),
        stat('messages / s', o.messages_per_sec === null ? null : Number(o.messages_per_sec).toFixed(1), 'stat-rate'),
        conditionsStat(o.open_conditions),
        stat('running jobs', o.running_jobs, 'stat-jobs')),
      o.full ? null : h('p', { class: 'muted' }, 'This server has no overview endpoint: device counts come from the device list; rates, conditions and jobs are not shown.'),
      h('h2', {}, 'Integrations'),
      integ === null
        ? h('p', { class: 'muted' }, 'Integration health is not available on this server.')
        : table('Integration health', ['Name', 'State', 'Queue', 'Oldest', 'Last error'],
          integ.map((i) => h('tr', {},
            h('td', {}, h('a', { href: '#/integrations' }, i.name)),
            h('td', {}, statusBadge(i.state)),
            h('td', {}, String(i.queue_depth)),
            h('td', {}, i.oldest_age_secs ? `${i.oldest_age_secs} s` : '—'),
            h('td', {}, i.last_error || '—'))),
          { empty: 'No integrations.', hideCaption: true }),
      h('p', {}, h('a', { href: '#/devices' }, 'All devices'), ' · ', h('a', { href: '#/devices?status=offline' }, 'Offline devices')));
  };
  await refresh();
  const again = debounce(refresh, 1000);
  ctx.cleanup(api.events({ kinds: 'device_connected,device_disconnected,job_updated,condition' }, () => again()));
  const timer = setInterval(refresh, 10000);
  ctx.cleanup(() => clearInterval(timer));
}
