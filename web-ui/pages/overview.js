// Overview: devices online, offline and silent, message rate (now, and per minute over the last
// hour as sparklines: overall, per workspace, per fleet), open conditions, running jobs, the
// health of integrations, and fleet health (per fleet: devices online, offline and silent, open
// conditions by severity, running rollouts and campaigns with their progress), all from one call
// to `GET /api/v1/overview`; every figure links to the list it counts. Refreshed on device, job
// and condition events and every 10 s. Without that endpoint it counts devices from the device
// listing instead.

import * as api from '../api.js';
import { h, clear, errorBox, table, statusBadge, debounce } from '../dom.js';
import { sparkline } from '../chart.js';

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

const SEVERITIES = ['critical', 'major', 'minor', 'warning', 'info'];

/** A count that links to the devices list filtered to what it counts. */
function countLink(n, query, label) {
  return n ? h('a', { href: `#/devices?${new URLSearchParams(query)}`, 'aria-label': `${n} ${label}` }, String(n)) : '0';
}

/** Progress of a rollout or campaign as a bar with its numbers. */
function progress(w) {
  const pct = w.total ? Math.round((100 * w.done) / w.total) : 0;
  const href = w.kind === 'campaign' ? `#/campaigns/${w.id}` : '#/jobs';
  return h('li', { 'data-work-id': w.id },
    h('a', { href }, `${w.kind === 'campaign' ? 'Campaign' : 'Rollout'} ${w.name}`), ' ',
    w.state !== 'running' ? [statusBadge(w.state), ' '] : null,
    h('progress', { max: w.total || 1, value: w.done, 'aria-label': `${w.name}: ${w.done} of ${w.total} done` }),
    ` ${w.done}/${w.total}`, w.failed ? h('span', { class: 'bad' }, ` · ${w.failed} failed`) : null, ` (${pct} %)`);
}

/** A last-hour sparkline with its total beside it (absent on a server without rates). */
function rate(values, label) {
  if (!Array.isArray(values)) return '—';
  const total = values.reduce((a, b) => a + b, 0);
  return h('span', { class: 'rate' }, sparkline(values, label), ` ${total}`);
}

/** The fleet health table: a row per fleet, each figure a link to the filtered list. */
function fleetHealth(o) {
  const rows = o.fleets.map((f) => {
    const base = { fleet_id: f.fleet_id };
    const conds = SEVERITIES.filter((s) => f.conditions[s]).map((s) => h('a', {
      href: `#/conditions?severity=${s}&fleet_id=${f.fleet_id}`, class: `badge severity severity-${s}`, 'aria-label': `${f.conditions[s]} ${s}`,
    }, `${f.conditions[s]} ${s}`));
    const unhealthy = f.conditions.critical || f.conditions.major || f.devices.offline > 0;
    return h('tr', { 'data-fleet-id': f.fleet_id, class: unhealthy ? 'attention' : null },
      h('th', { scope: 'row' }, h('span', { class: 'muted' }, `${f.workspace} / `), h('a', { href: `#/fleets/${f.fleet_id}` }, f.fleet)),
      h('td', { 'data-col': 'total' }, countLink(f.devices.total, base, 'devices')),
      h('td', { 'data-col': 'online' }, countLink(f.devices.online, { ...base, status: 'online' }, 'online')),
      h('td', { 'data-col': 'offline' }, countLink(f.devices.offline, { ...base, status: 'offline' }, 'offline')),
      h('td', { 'data-col': 'silent' }, countLink(f.devices.silent, { ...base, silent_mins: o.silent_mins, sort: 'last_activity' }, 'silent')),
      h('td', { 'data-col': 'conditions' }, conds.length ? conds.flatMap((c) => [c, ' ']) : '—'),
      h('td', { 'data-col': 'work' }, f.work.length ? h('ul', { class: 'plain' }, f.work.map(progress)) : '—'),
      h('td', { 'data-col': 'messages' }, rate(f.messages_per_minute, f.fleet)));
  });
  // Each workspace's rate: the sum of its fleets'.
  const byWs = new Map();
  for (const f of o.fleets) {
    const w = byWs.get(f.workspace_id) || { name: f.workspace, id: f.workspace_id, values: [] };
    (f.messages_per_minute || []).forEach((n, i) => { w.values[i] = (w.values[i] || 0) + n; });
    byWs.set(f.workspace_id, w);
  }
  const wsRows = [...byWs.values()].map((w) => h('tr', { 'data-workspace-id': w.id },
    h('th', { scope: 'row' }, w.name), h('td', { 'data-col': 'messages' }, rate(w.values, w.name))));
  return h('section', { 'aria-labelledby': 'fleet-health-title', id: 'fleet-health' },
    h('h2', { id: 'fleet-health-title' }, 'Fleet health'),
    table('Fleet health', ['Fleet', 'Devices', 'Online', 'Offline', `Silent ${o.silent_mins} min+`, 'Open conditions', 'Rollouts & campaigns', 'Messages, last hour'], rows,
      { empty: 'No fleets yet.', hideCaption: true, class: 'fleet-health' }),
    wsRows.length ? table('Messages per workspace, last hour', ['Workspace', 'Messages, last hour'], wsRows, { class: 'workspace-rates' }) : null,
    o.fleets_truncated ? h('p', { class: 'muted' }, 'Only the first 200 fleets are listed; the totals above count them all.') : null);
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
        stat('devices', o.devices.total, 'stat-total', '#/devices'),
        stat('online', o.devices.online, 'stat-online', '#/devices?status=online'),
        stat('offline', o.devices.offline, 'stat-offline', '#/devices?status=offline'),
        o.devices.silent === undefined ? null
          : stat(`silent ${o.silent_mins} min+`, o.devices.silent, 'stat-silent', `#/devices?silent_mins=${o.silent_mins}&sort=last_activity`),
        stat('messages / s', o.messages_per_sec === null ? null : Number(o.messages_per_sec).toFixed(1), 'stat-rate'),
        Array.isArray(o.messages_per_minute) ? h('div', { class: 'stat', id: 'stat-hour' },
          h('span', { class: 'stat-value' }, sparkline(o.messages_per_minute, 'All fleets you see')),
          h('span', { class: 'stat-label' }, `${o.messages_per_minute.reduce((a, b) => a + b, 0)} messages, last hour`)) : null,
        conditionsStat(o.open_conditions),
        stat('running jobs', o.running_jobs, 'stat-jobs', '#/jobs')),
      Array.isArray(o.fleets) ? fleetHealth(o) : null,
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
