// Dashboard widgets: each kind draws itself into a box from the REST API, read with the
// viewer's own rights — chart (aggregates of several keys of several devices over the
// dashboard's shared window), value, gauge, table (the dashboard's devices with chosen keys),
// conditions, and map (every device of the scope, up to MAP_CAP, that reports a latitude and a
// longitude, read a page of 1,000 at a time, on the built-in world outline or on the server's
// tiles). Drawing is SVG with attributes and classes only (the CSP allows no inline styles). A
// redraw keeps what the viewer had open and where their focus was. The page
// (pages/dashboard.js) owns the window, live updates, device names and editing.

import * as api from './api.js';
import { h, clear, table, statusBadge, timeEl, fmtValue, errorBox } from './dom.js';
import { nameOf } from './picker.js';
import { lineChart } from './chart.js';

const NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export const KINDS = [
  ['chart', 'Time-series chart'],
  ['value', 'Latest value'],
  ['gauge', 'Gauge'],
  ['table', 'Table of devices'],
  ['conditions', 'Conditions'],
  ['map', 'Map'],
];

const SEVERITIES = ['critical', 'major', 'minor', 'warning', 'info'];
// Bucket lengths a chart may pick by itself, in minutes: the smallest that keeps a window at
// about 120 buckets or fewer.
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];

/** The interval a chart asks for: its own, unless the window would need too many buckets. */
export function chartInterval(widget, from, to) {
  const mins = (to - from) / 60000;
  const auto = STEPS.find((m) => mins / m <= 120) || 1440;
  const own = widget.interval ? parseInterval(widget.interval) : null;
  // The server answers at most a few thousand buckets: a fixed short interval on a long
  // window falls back to the automatic one.
  const m = own && mins / own <= 1500 ? own : auto;
  return m % 1440 === 0 ? `${m / 1440}d` : m % 60 === 0 ? `${m / 60}h` : `${m}m`;
}

function parseInterval(s) {
  const m = /^(\d+)([mhd])$/.exec(s || '');
  if (!m) return null;
  return Number(m[1]) * { m: 1, h: 60, d: 1440 }[m[2]];
}

/** The devices of the dashboard's scope, as a query. */
export function scopeQuery(d) {
  return d.fleet_id ? { fleet_id: d.fleet_id } : { workspace_id: d.workspace_id };
}

/** The most devices a map reads (20 pages): past it the map says that it shows only these. */
export const MAP_CAP = 20000;
const MAP_PAGE = 1000;
/** Up to this many markers are in the tab order; past it the keyboard goes by the map's list. */
const MARKER_TAB_STOPS = 100;

const KIND_DRAW = { chart, value, gauge, table: devicesTable, conditions, map };

/**
 * Draws `w` into `box`. `ctx`: {dashboard, from, to, names (device id → name, null for a
 * device known not to exist), tileUrl, width (px)}. Resolves when drawn; errors are shown in
 * the box. The box's open details and the focused link or control survive the redraw (live
 * data redraws every few seconds while someone may be reading or tabbing through it).
 */
export async function draw(box, w, ctx) {
  let nodes;
  try {
    nodes = await KIND_DRAW[w.kind](w, ctx);
  } catch (e) {
    nodes = [errorBox(e)];
  }
  const kept = remember(box);
  clear(box, nodes);
  restore(box, kept);
}

/** What a redraw must not lose: the open details (by class) and the focused element. */
function remember(box) {
  const open = [...box.querySelectorAll('details[open]')].map((d) => d.className);
  const a = document.activeElement;
  if (!a || a === box || !box.contains(a)) return { open, focus: null };
  const focus = a.tagName === 'SUMMARY' ? { summary: a.parentElement.className } : { tag: a.tagName, href: a.getAttribute('href') };
  return { open, focus };
}

function restore(box, { open, focus }) {
  for (const d of box.querySelectorAll('details')) if (open.includes(d.className)) d.open = true;
  if (!focus) return;
  let el = null;
  if (focus.summary !== undefined) el = [...box.querySelectorAll('details')].find((d) => d.className === focus.summary)?.querySelector('summary');
  else if (focus.href) el = [...box.querySelectorAll('a')].find((x) => x.tagName === focus.tag && x.getAttribute('href') === focus.href);
  if (el) el.focus({ preventScroll: true });
  else {
    // The element went (a device left the table): the widget keeps the focus.
    box.setAttribute('tabindex', '-1');
    box.focus({ preventScroll: true });
  }
}

function deviceName(ctx, id) { return nameOf(ctx.names, id); }

/** `api.get(path)`, or `missing` when the server answers 404 (a device deleted since). */
async function getOr(path, missing) {
  try {
    return await api.get(path);
  } catch (e) {
    if (e.status === 404) return missing;
    throw e;
  }
}

async function chart(w, ctx) {
  const interval = chartInterval(w, ctx.from, ctx.to);
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const answers = await Promise.all(w.devices.map((d) => getOr(`/devices/${d}/telemetry/aggregate${api.qs({ interval, keys: w.keys.join(','), from: ctx.from, to: ctx.to, tz })}`, { data: {} })
    .then((r) => [d, r])));
  const series = [];
  for (const [d, r] of answers) {
    for (const k of w.keys) {
      const points = (r.data[k] || []).map((b) => ({ ts: b.ts, v: b[w.agg || 'avg'] })).filter((p) => Number.isFinite(p.v));
      series.push({ name: `${deviceName(ctx, d)} · ${k}`, points });
    }
  }
  const [first, ...more] = series;
  const label = `${w.title}: ${w.keys.join(', ')} of ${w.devices.map((d) => deviceName(ctx, d)).join(', ')}, ${w.agg || 'avg'} per ${interval}`;
  const svg = lineChart(first ? first.points : [], { from: ctx.from, to: ctx.to, label, width: ctx.width, name: first ? first.name : '', more });
  svg.dataset.interval = interval;
  const legend = h('ul', { class: 'legend' }, series.map((x, i) => h('li', {}, h('span', { class: `swatch s${i % 10}`, 'aria-hidden': 'true' }), x.name)));
  // The chart's numbers for screen readers and keyboard users: the latest bucket of each series.
  const latest = table(`${w.title}: latest ${w.agg || 'avg'} per series`, ['Series', 'Time', 'Value'],
    series.map((x) => {
      const p = x.points[x.points.length - 1];
      return h('tr', {}, h('th', { scope: 'row' }, x.name), h('td', {}, p ? new Date(p.ts).toLocaleString() : '—'), h('td', { class: 'num' }, p ? String(Number(p.v.toPrecision(6))) : '—'));
    }), { hideCaption: true });
  return [h('div', { class: 'chart-box' }, svg), legend, h('details', { class: 'chart-numbers' }, h('summary', {}, 'Latest values'), latest)];
}

/** The latest value of `key` of `device`: null when there is none; `gone` when the device is. */
async function latestOf(device, key) {
  const r = await getOr(`/devices/${device}/telemetry/latest${api.qs({ keys: key })}`, 'gone');
  return r === 'gone' ? r : (r.data || {})[key] || null;
}

/** The line under a value or gauge: key, device, and when (or why there is no value). */
function valueNote(w, ctx, p) {
  return h('p', { class: 'muted' }, `${w.key} of ${deviceName(ctx, w.device_id)} · `,
    p === 'gone' ? 'the device no longer exists' : p ? timeEl(p.ts) : 'no value yet');
}

async function value(w, ctx) {
  const got = await latestOf(w.device_id, w.key);
  const p = got === 'gone' ? null : got;
  return [
    h('p', { class: 'widget-value' }, h('span', { class: 'stat-value' }, p ? fmtValue(p.value) : '—'), w.unit && p ? h('span', { class: 'unit' }, ` ${w.unit}`) : null),
    valueNote(w, ctx, got)];
}

/** A point on the gauge's arc: `f` from 0 (left) to 1 (right), on a half circle. */
function arcPoint(f, r) {
  const a = Math.PI * (1 - f);
  return [100 + r * Math.cos(a), 100 - r * Math.sin(a)];
}

async function gauge(w, ctx) {
  const got = await latestOf(w.device_id, w.key);
  const p = got === 'gone' ? null : got;
  const v = p && Number.isFinite(Number(p.value)) && typeof p.value !== 'boolean' ? Number(p.value) : null;
  const f = v === null ? 0 : Math.max(0, Math.min(1, (v - w.min) / (w.max - w.min)));
  const r = 80;
  const [sx, sy] = arcPoint(0, r);
  const [ex, ey] = arcPoint(1, r);
  const [vx, vy] = arcPoint(f, r);
  const label = `${w.title}: ${v === null ? 'no value' : `${v}${w.unit ? ` ${w.unit}` : ''}`} on a scale of ${w.min} to ${w.max}`;
  const svg = s('svg', { viewBox: '0 0 200 120', class: 'gauge', role: 'img', 'aria-label': label },
    s('title', {}, label),
    s('path', { d: `M${sx},${sy} A${r},${r} 0 0 1 ${ex},${ey}`, class: 'gauge-track' }),
    v === null ? s('g', {}) : s('path', { d: `M${sx},${sy} A${r},${r} 0 0 1 ${vx.toFixed(2)},${vy.toFixed(2)}`, class: 'gauge-value' }),
    s('text', { x: 100, y: 95, 'text-anchor': 'middle', class: 'gauge-text' }, v === null ? '—' : `${Number(v.toPrecision(6))}${w.unit ? ` ${w.unit}` : ''}`),
    s('text', { x: sx, y: 115, 'text-anchor': 'middle', class: 'tick' }, String(w.min)),
    s('text', { x: ex, y: 115, 'text-anchor': 'middle', class: 'tick' }, String(w.max)));
  svg.dataset.value = v === null ? '' : String(v);
  return [svg, valueNote(w, ctx, got)];
}

async function devicesTable(w, ctx) {
  const r = await api.get(`/devices${api.qs({ ...scopeQuery(ctx.dashboard), keys: w.keys.join(','), limit: w.limit, sort: 'name' })}`);
  return [table(w.title, ['Device', 'Status', ...w.keys, 'Last activity'], r.items.map((d) => h('tr', {},
    h('th', { scope: 'row' }, h('a', { href: `#/devices/${d.id}` }, d.name)),
    h('td', {}, statusBadge(d.status || 'unknown')),
    w.keys.map((k) => h('td', { class: 'num', 'data-key': k }, d.latest && d.latest[k] ? fmtValue(d.latest[k].value) : '—')),
    h('td', {}, timeEl(d.last_activity_at || d.last_seen_at)))), { hideCaption: true, empty: 'No devices.' }),
  r.total > r.items.length ? h('p', { class: 'muted' }, `${r.items.length} of ${r.total} devices.`) : null];
}

async function conditions(w, ctx) {
  const min = SEVERITIES.indexOf(w.min_severity || 'info');
  const severity = SEVERITIES.slice(0, min + 1).join(',');
  const r = await api.get(`/conditions${api.qs({ ...scopeQuery(ctx.dashboard), state: 'open', severity, limit: 100 })}`);
  return [table(w.title, ['Severity', 'Condition', 'Device', 'Opened'], r.items.map((c) => h('tr', {},
    h('td', {}, h('span', { class: `badge severity severity-${c.severity}` }, c.severity)),
    h('th', { scope: 'row' }, c.name),
    h('td', {}, h('a', { href: `#/devices/${c.device_id}` }, c.device_name || deviceName(ctx, c.device_id))),
    h('td', {}, timeEl(c.opened_at)))), { hideCaption: true, empty: 'No open conditions.' })];
}

/** Web Mercator position (0..1, 0..1) of a latitude and longitude (tiles' projection). */
export function mercator(lat, lon) {
  const la = Math.max(-85, Math.min(85, lat)) * Math.PI / 180;
  return [(lon + 180) / 360, (1 - Math.log(Math.tan(la) + 1 / Math.cos(la)) / Math.PI) / 2];
}

/**
 * The devices of the dashboard's scope that report a position, paged in creation order
 * (`next_cursor`) up to MAP_CAP devices read: {placed (by name), read, total, cut}.
 */
async function positions(w, ctx) {
  const placed = [];
  let read = 0;
  let total = 0;
  let cursor;
  do {
    const r = await api.get(`/devices${api.qs({ ...scopeQuery(ctx.dashboard), keys: `${w.lat_key},${w.lon_key}`, limit: Math.min(MAP_PAGE, MAP_CAP - read), cursor })}`);
    if (!read) total = r.total;
    read += r.items.length;
    for (const d of r.items) {
      const la = d.latest?.[w.lat_key];
      const lo = d.latest?.[w.lon_key];
      const lat = Number(la?.value);
      const lon = Number(lo?.value);
      if (la && lo && Number.isFinite(lat) && Number.isFinite(lon) && Math.abs(lat) <= 90 && Math.abs(lon) <= 180) placed.push({ d, lat, lon });
    }
    cursor = r.next_cursor;
  } while (cursor && read < MAP_CAP);
  placed.sort((a, b) => a.d.name.localeCompare(b.d.name));
  return { placed, read, total: Math.max(total, read), cut: Boolean(cursor) && total > read };
}

const count = (n) => n.toLocaleString('en-US');

async function map(w, ctx) {
  const { placed, read, total, cut } = await positions(w, ctx);
  const tabbable = placed.length <= MARKER_TAB_STOPS;
  const label = `${w.title}: ${placed.length} device${placed.length === 1 ? '' : 's'} on a world map`;
  // A group, not an image: the markers inside are links that must reach assistive technology.
  let svg;
  let tilesNote = null;
  if (ctx.tileUrl) {
    // Zoom 2: 4 × 4 tiles of the server's tile set cover the world.
    const Z = 2;
    const N = 2 ** Z;
    const T = 256;
    svg = s('svg', { viewBox: `0 0 ${N * T} ${N * T}`, class: 'map tiles', role: 'group', 'aria-label': label }, s('title', {}, label));
    tilesNote = h('p', { class: 'muted tiles-note', hidden: true }, 'Some map tiles could not be loaded from the tile server.');
    let loaded = 0;
    let failed = 0;
    const tiles = s('g', { class: 'tile-layer', 'aria-hidden': 'true' });
    for (let x = 0; x < N; x++) {
      for (let y = 0; y < N; y++) {
        const href = ctx.tileUrl.replace('{z}', Z).replace('{x}', x).replace('{y}', y);
        const img = s('image', { href, x: x * T, y: y * T, width: T, height: T });
        img.addEventListener('load', () => { svg.dataset.tilesLoaded = String(++loaded); });
        img.addEventListener('error', () => { svg.dataset.tilesFailed = String(++failed); tilesNote.hidden = false; });
        tiles.append(img);
      }
    }
    svg.append(tiles);
    for (const p of placed) {
      const [mx, my] = mercator(p.lat, p.lon);
      svg.append(marker(mx * N * T, my * N * T, 8, p, w, tabbable));
    }
  } else {
    const world = await import('./world.js');
    svg = s('svg', { viewBox: `0 0 ${world.WIDTH} ${world.HEIGHT}`, class: 'map', role: 'group', 'aria-label': label },
      s('title', {}, label),
      s('g', { 'aria-hidden': 'true' },
        s('rect', { x: 0, y: 0, width: world.WIDTH, height: world.HEIGHT, class: 'sea' }),
        s('path', { d: world.LAND, class: 'land' })));
    for (const p of placed) svg.append(marker(p.lon + 180, 90 - p.lat, 2.2, p, w, tabbable));
  }
  svg.dataset.placed = String(placed.length);
  svg.dataset.read = String(read);
  const summary = `${count(placed.length)} of ${count(read)} devices report a position`
    + (cut ? ` (the map reads at most ${count(MAP_CAP)} devices: ${count(total - read)} of the dashboard's ${count(total)} are left out)` : '');
  return [svg, tilesNote,
    tabbable ? null : h('p', { class: 'muted' }, `With more than ${MARKER_TAB_STOPS} markers, the keyboard reaches each device through the list below.`),
    h('details', { class: 'map-list' }, h('summary', { 'data-cut': cut ? 'true' : null }, summary),
      table(`${w.title}: positions`, ['Device', 'Latitude', 'Longitude'], placed.map((p) => h('tr', {},
        h('th', { scope: 'row' }, h('a', { href: `#/devices/${p.d.id}` }, p.d.name)),
        h('td', { class: 'num' }, String(p.lat)), h('td', { class: 'num' }, String(p.lon)))), { hideCaption: true, empty: 'No device reports a position.' }))];
}

function marker(x, y, r, p, w, tabbable) {
  const status = p.d.status === 'online' ? 'online' : 'offline';
  const a = s('a', { href: `#/devices/${p.d.id}`, 'aria-label': `${p.d.name}, ${status}, at ${p.lat}, ${p.lon}` },
    s('circle', { cx: x.toFixed(2), cy: y.toFixed(2), r, class: `marker ${status}`, 'data-device': p.d.id },
      s('title', {}, `${p.d.name}: ${w.lat_key} ${p.lat}, ${w.lon_key} ${p.lon}`)));
  if (!tabbable) a.setAttribute('tabindex', '-1');
  return a;
}
