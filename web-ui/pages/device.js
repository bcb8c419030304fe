// One device: identity and status, conditions (open first; acknowledge, close), credentials
// (revoke, add, certificate download), attributes (shared ones editable; those that come from
// the fleet's defaults say so), telemetry (chart by tag and key over a chosen range, and
// latest values), jobs (list and a send-command form whose result updates live), updates (the
// device's OTA timeline in every campaign that targeted it) and connection history. One event stream for the device keeps status, data and jobs current. Changes need
// the operator role on the device's fleet (deleting it the admin role): with a lower role the
// controls are replaced by a note (roles.js).

import * as api from '../api.js';
import { h, clear, field, table, onSubmit, toast, announce, timeEl, fmtTime, fmtValue, statusBadge, errorBox, debounce, download, secretBox, errorText } from '../dom.js';
import { lineChart } from '../chart.js';
import { ConditionRows } from './conditions.js';
import { roleOnFleet, allows, roleNote, roleText } from '../roles.js';
import { timelineList } from './campaign.js';

const RANGES = [
  ['15m', '15 minutes', 15 * 60e3],
  ['1h', '1 hour', 3600e3],
  ['6h', '6 hours', 6 * 3600e3],
  ['24h', '24 hours', 86400e3],
  ['7d', '7 days', 7 * 86400e3],
  ['30d', '30 days', 30 * 86400e3],
];
// Longer spans read hourly (past two days) or 6-hourly (past eight) rollups instead of raw
// points.
const aggInterval = (span) => (span > 8 * 86400e3 ? '6h' : span > 2 * 86400e3 ? '1h' : null);
const MIN_SPAN = 60e3;
const MAX_SPAN = 90 * 86400e3;
const AGG_NAME = { '1h': 'hourly', '6h': '6-hourly' };

export async function render(main, ctx) {
  const id = ctx.params[0];
  const base = `/devices/${id}`;
  const dev = await api.get(base);
  const [fleet, workspace] = await Promise.all([
    api.get(`/fleets/${dev.fleet_id}`).catch(() => null),
    api.get(`/workspaces/${dev.workspace_id}`).catch(() => null),
  ]);
  const role = roleOnFleet(dev.workspace_id, dev.fleet_id);
  const operate = allows(role, 'operator');
  const yourRole = roleText(role);

  const sections = {
    identity: h('section', { id: 'identity', 'aria-labelledby': 'identity-h' }),
    conditions: h('section', { id: 'conditions', 'aria-labelledby': 'conditions-h' }),
    credentials: h('section', { id: 'credentials', 'aria-labelledby': 'credentials-h' }),
    attributes: h('section', { id: 'attributes', 'aria-labelledby': 'attributes-h' }),
    telemetry: h('section', { id: 'telemetry', 'aria-labelledby': 'telemetry-h' }),
    jobs: h('section', { id: 'jobs', 'aria-labelledby': 'jobs-h' }),
    updates: h('section', { id: 'updates', 'aria-labelledby': 'updates-h' }),
    history: h('section', { id: 'history', 'aria-labelledby': 'history-h' }),
  };
  const statusEl = h('span', { id: 'device-status', 'aria-live': 'polite' }, statusBadge(dev.status));
  const toc = h('nav', { class: 'toc', 'aria-label': 'Sections' }, h('ul', {},
    [['identity', 'Identity'], ['conditions', 'Conditions'], ['credentials', 'Credentials'], ['attributes', 'Attributes'], ['telemetry', 'Telemetry'], ['jobs', 'Jobs'], ['updates', 'Updates'], ['history', 'Connection history']]
      .map(([k, l]) => h('li', {}, h('a', { href: `#/devices/${id}`, 'data-section': k, onclick: (ev) => {
        ev.preventDefault();
        const target = sections[k].querySelector('h2');
        target.setAttribute('tabindex', '-1');
        target.focus();
        target.scrollIntoView({ block: 'start' });
      } }, l)))));
  clear(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/devices' }, 'Devices'), ' / ', fleet ? h('a', { href: `#/devices?fleet_id=${fleet.id}` }, fleet.name) : ''),
    h('h1', {}, dev.name, ' ', statusEl),
    toc, ...Object.values(sections));

  // ---- identity ----
  /** What the device is in ThingsBoard's gateway API. */
  function gatewayText(g) {
    if (g?.role === 'gateway') {
      const types = Object.keys(g.type_fleets || {});
      return h('span', {}, `a gateway: it speaks for `, h('a', { href: `#/devices?gateway_id=${dev.id}`, id: 'gateway-subdevices' }, 'its sub-devices'),
        types.length ? ` (types with their own fleet: ${types.join(', ')})` : '');
    }
    if (g?.role === 'sub_device') {
      return h('span', {}, 'a sub-device of ', h('a', { href: `#/devices/${g.gateway_id}` }, 'its gateway'), `, type ${g.device_type}`);
    }
    return 'an ordinary device';
  }

  function renderIdentity(d) {
    clear(sections.identity,
      h('h2', { id: 'identity-h' }, 'Identity'),
      h('dl', { class: 'facts' },
        h('dt', {}, 'ID'), h('dd', {}, h('code', {}, d.id)),
        h('dt', {}, 'Label'), h('dd', {}, d.label || '—'),
        h('dt', {}, 'Workspace'), h('dd', {}, workspace ? workspace.name : d.workspace_id),
        h('dt', {}, 'Fleet'), h('dd', {}, fleet ? h('a', { href: `#/fleets/${fleet.id}`, title: 'The fleet\'s settings' }, fleet.name) : d.fleet_id),
        h('dt', {}, 'Enabled'), h('dd', {}, d.enabled ? 'yes' : 'no (it cannot connect)'),
        h('dt', {}, 'Gateway API'), h('dd', { id: 'device-gateway' }, gatewayText(d.gateway)),
        h('dt', {}, 'Connections'), h('dd', { id: 'device-connections' }, String(d.connections)),
        h('dt', {}, 'Created'), h('dd', {}, fmtTime(d.created_at)),
        yourRole ? [h('dt', {}, 'Your role'), h('dd', { id: 'device-role' }, yourRole)] : null),
      h('div', { class: 'actions' },
        operate ? h('button', { type: 'button', id: 'toggle-enabled', onclick: async () => {
          try {
            const nd = await api.patch(base, { enabled: !d.enabled });
            Object.assign(dev, nd);
            renderIdentity(dev);
            announce(nd.enabled ? 'Device enabled.' : 'Device disabled.');
          } catch (e) { toast(errorText(e), 'error'); }
        } }, d.enabled ? 'Disable device' : 'Enable device') : null,
        operate && d.gateway?.role !== 'sub_device' ? h('button', { type: 'button', id: 'toggle-gateway', onclick: async () => {
          const on = d.gateway?.role !== 'gateway';
          try {
            const nd = await api.patch(base, { gateway: on });
            Object.assign(dev, nd);
            renderIdentity(dev);
            announce(on ? 'The device is a gateway now.' : 'The device is no longer a gateway.');
          } catch (e) { toast(errorText(e), 'error'); }
        } }, d.gateway?.role === 'gateway' ? 'Stop being a gateway' : 'Make it a gateway') : null,
        allows(role, 'admin') ? h('button', { type: 'button', class: 'danger', id: 'delete-device', onclick: async () => {
          if (!window.confirm(`Delete device ${d.name} and its data?`)) return;
          try { await api.del(base); toast('Device deleted.'); ctx.go('/devices'); } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Delete device') : null),
      operate ? (allows(role, 'admin') ? null : roleNote('admin', 'Deleting the device'))
        : roleNote('operator', 'Enabling, disabling and deleting the device'));
  }
  renderIdentity(dev);

  // ---- conditions ----
  // Open ones first, then the latest closed ones; each newest first. An action changes its row
  // at once; the event it causes reads the list again (a closed one moves down).
  const condBox = h('div', { id: 'device-conditions' });
  const condRows = new ConditionRows({ withDevice: false, canAct: () => operate });
  async function renderConditions() {
    try {
      const [open, closed] = await Promise.all([
        api.get(`${base}/conditions${api.qs({ state: 'open', limit: 100 })}`),
        api.get(`${base}/conditions${api.qs({ state: 'closed', limit: 10 })}`),
      ]);
      if (!ctx.current()) return;
      condRows.render(condBox, 'Conditions of this device, open ones first', open.items.concat(closed.items), { empty: 'No conditions reported.' });
      condBox.dataset.open = String(open.items.length);
    } catch (e) {
      clear(condBox, errorBox(e));
    }
  }
  clear(sections.conditions, h('h2', { id: 'conditions-h' }, 'Conditions'), condBox,
    h('p', {}, h('a', { href: `#/conditions${api.qs({ device_id: id, state: 'all' })}`, id: 'device-conditions-all' }, 'All conditions of this device')));

  // ---- credentials ----
  let caPem = null;
  const ca = async () => {
    if (caPem === null) caPem = await (await fetch('/api/v1/ca.pem')).text();
    return caPem;
  };
  const issued = h('div', { id: 'credential-issued' });
  async function renderCredentials() {
    let creds;
    try { creds = await api.get(`${base}/credentials`); } catch (e) { clear(sections.credentials, h('h2', { id: 'credentials-h' }, 'Credentials'), errorBox(e)); return; }
    const rows = creds.map((c) => {
      const what = c.type === 'access_token' ? `token ${c.hint}…`
        : c.type === 'mqtt_basic' ? [c.client_id && `client id ${c.client_id}`, c.username && `user ${c.username}`].filter(Boolean).join(', ')
          : c.certificate ? `${c.certificate.subject} (${c.certificate.origin}, until ${fmtTime(c.certificate.not_after)})`
            : c.spki_sha256 ? `key ${c.spki_sha256.slice(0, 16)}…` : '';
      return h('tr', {},
        h('td', {}, c.type),
        h('td', {}, statusBadge(c.status)),
        h('td', {}, what),
        h('td', {}, fmtTime(c.created_at)),
        h('td', { class: 'actions' },
          c.certificate ? h('button', { type: 'button', class: 'small', onclick: async () => {
            download(`${dev.name}-cert.pem`, `${c.certificate.certificate_pem.trim()}\n${(await ca()).trim()}\n`);
          } }, 'Download certificate + CA') : null,
          c.status !== 'revoked' && operate ? h('button', { type: 'button', class: 'small danger', onclick: async () => {
            if (!window.confirm('Revoke this credential? Sessions using it are closed.')) return;
            try { await api.post(`${base}/credentials/${c.id}/revoke`); announce('Credential revoked.'); renderCredentials(); } catch (e) { toast(errorText(e), 'error'); }
          } }, 'Revoke') : null));
    });
    const form = !operate ? roleNote('operator', 'Adding and revoking credentials') : onSubmit(h('form', { class: 'inline-form', 'aria-label': 'Add a credential' },
      field('New credential', h('select', { name: 'type', id: 'credential-type' },
        h('option', { value: 'access_token' }, 'Access token'),
        h('option', { value: 'issued_certificate' }, 'Certificate from Corral\'s CA (key generated)'))),
      h('button', { type: 'submit' }, 'Add credential')), async (d) => {
      const r = await api.post(`${base}/credentials`, { type: d.get('type') });
      clear(issued,
        r.token ? secretBox('Access token', r.token) : null,
        r.bundle ? h('div', { class: 'notice' },
          h('p', {}, h('strong', {}, 'Certificate issued.'), ' The private key is shown only now: download it.'),
          h('div', { class: 'actions' },
            r.bundle.private_key_pem ? h('button', { type: 'button', onclick: () => download(`${dev.name}.key`, r.bundle.private_key_pem) }, 'Download private key') : null,
            h('button', { type: 'button', onclick: () => download(`${dev.name}.pem`, r.bundle.certificate_pem) }, 'Download certificate'),
            h('button', { type: 'button', onclick: () => download('ca.pem', r.bundle.ca_pem) }, 'Download CA'))) : null);
      announce('Credential added.');
      renderCredentials();
    });
    clear(sections.credentials, h('h2', { id: 'credentials-h' }, 'Credentials'),
      table('Credentials', ['Type', 'Status', 'Identity', 'Created', ''], rows, { hideCaption: true, empty: 'No credentials.' }),
      form, issued);
  }

  // ---- attributes ----
  async function renderAttributes() {
    let a;
    let defaults;
    try {
      [a, defaults] = await Promise.all([api.get(`${base}/attributes`), api.get(`/fleets/${dev.fleet_id}/attributes/shared`).catch(() => ({}))]);
    } catch (e) { clear(sections.attributes, h('h2', { id: 'attributes-h' }, 'Attributes'), errorBox(e)); return; }
    // A shared value that is the fleet's default (its time and value): the device has none of
    // its own, so there is nothing of the device's to delete; setting one overrides it.
    const fromFleet = (k, v) => defaults[k] && defaults[k].ts === v.ts && JSON.stringify(defaults[k].value) === JSON.stringify(v.value);
    const rowsOf = (scope, m, editable) => Object.entries(m || {}).map(([k, v]) => h('tr', { 'data-key': k, 'data-from-fleet': scope === 'shared' && fromFleet(k, v) ? 'yes' : null },
      h('th', { scope: 'row' }, k), h('td', {}, h('code', {}, fmtValue(v.value))), h('td', {}, timeEl(v.ts)),
      scope === 'shared' && fromFleet(k, v) ? h('td', {}, h('a', { href: `#/fleets/${dev.fleet_id}`, class: 'small' }, 'fleet default'))
        : editable ? h('td', {}, h('button', { type: 'button', class: 'small', 'aria-label': `Delete shared attribute ${k}`, onclick: async () => {
          try { await api.del(`${base}/attributes/${scope}?keys=${encodeURIComponent(k)}`); announce(`Attribute ${k} deleted.`); renderAttributes(); } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Delete')) : scope === 'shared' ? h('td', {}) : null));
    const form = !operate ? roleNote('operator', 'Setting shared attributes') : onSubmit(h('form', { class: 'inline-form', id: 'shared-form', 'aria-label': 'Set a shared attribute' },
      field('Key', h('input', { name: 'key', required: true, id: 'shared-key', autocomplete: 'off' })),
      field('Value', h('input', { name: 'value', required: true, id: 'shared-value', autocomplete: 'off' }), 'JSON (42, true, "text", {…}) or plain text'),
      h('button', { type: 'submit' }, 'Set shared attribute')), async (d) => {
      const raw = d.get('value');
      let value;
      try { value = JSON.parse(raw); } catch { value = raw; }
      await api.put(`${base}/attributes/shared`, { [d.get('key')]: value });
      announce(`Shared attribute ${d.get('key')} set; pushed to the device.`);
      renderAttributes();
    });
    clear(sections.attributes, h('h2', { id: 'attributes-h' }, 'Attributes'),
      h('div', { class: 'cols' },
        h('div', {}, table('Shared (desired, pushed to the device)', ['Key', 'Value', 'Updated', ''], rowsOf('shared', a.shared, operate), { empty: 'No shared attributes.' }), form),
        h('div', {}, table('Client (reported by the device)', ['Key', 'Value', 'Updated'], rowsOf('client', a.client, false), { empty: 'None reported.' })),
        h('div', {}, table('Server (private)', ['Key', 'Value', 'Updated'], rowsOf('server', a.server, false), { empty: 'None.' }))));
  }

  // ---- telemetry ----
  // The chart opens on a key whose latest value is a number, over the shortest range that holds
  // its latest point; further numeric keys can be drawn beside it, and what is shown can be
  // downloaded as CSV. Zoom and pan: buttons (keyboard), or a drag across the chart to zoom into
  // that stretch; `tel.view` holds the window then, until Live goes back to the range.
  const MAX_EXTRA = 4;
  const tel = { tags: {}, tag: 'default', key: '', range: '1h', latest: {}, extra: new Set(), autoRange: true, shown: null, view: null };
  const tagSel = h('select', { id: 'chart-tag' });
  const keySel = h('select', { id: 'chart-key' });
  const rangeSel = h('select', { id: 'chart-range' }, RANGES.map(([v, l]) => h('option', { value: v, selected: v === tel.range }, l)));
  const seriesBox = h('fieldset', { class: 'series', id: 'chart-series' });
  const chartBox = h('div', { id: 'chart', class: 'chart-box', 'aria-live': 'polite', 'aria-busy': 'true' });
  const csvBtn = h('button', { type: 'button', id: 'chart-csv', class: 'small', disabled: true }, 'Download the shown data (CSV)');
  /** The window shown: the zoomed one, or the range up to now. */
  const windowOf = () => {
    if (tel.view) return tel.view;
    const to = Date.now();
    return { from: to - RANGES.find(([v]) => v === tel.range)[2], to };
  };
  const setView = (from, to) => {
    const span = Math.max(MIN_SPAN, Math.min(MAX_SPAN, to - from));
    const mid = (from + to) / 2;
    let v = { from: Math.round(mid - span / 2), to: Math.round(mid + span / 2) };
    // Past now there is nothing to show: a window reaching now is shown up to now.
    if (v.to > Date.now()) v = { from: Date.now() - span, to: Date.now() };
    tel.view = v;
    liveBtn.setAttribute('aria-pressed', 'false');
    renderChart();
  };
  const zoomBtn = (id, text, f) => h('button', { type: 'button', class: 'small', id, onclick: () => { const w = windowOf(); f(w, w.to - w.from); } }, text);
  const liveBtn = h('button', { type: 'button', class: 'small', id: 'chart-live', 'aria-pressed': 'true', onclick: () => { tel.view = null; liveBtn.setAttribute('aria-pressed', 'true'); renderChart(); } }, 'Live');
  const zoomBar = h('div', { class: 'row chart-zoom', role: 'group', 'aria-label': 'Zoom and pan the chart' },
    zoomBtn('chart-zoom-in', 'Zoom in', (w, span) => setView(w.from + span / 4, w.to - span / 4)),
    zoomBtn('chart-zoom-out', 'Zoom out', (w, span) => setView(w.from - span / 2, w.to + span / 2)),
    zoomBtn('chart-earlier', '← Earlier', (w, span) => setView(w.from - span / 2, w.to - span / 2)),
    zoomBtn('chart-later', 'Later →', (w, span) => setView(w.from + span / 2, w.to + span / 2)),
    liveBtn,
    h('small', { class: 'muted' }, 'or drag across the chart to zoom in'));
  // A drag across the plot zooms into the stretch dragged over (the chart's left and right
  // margins are 64 and 16 of its viewBox units, as chart.js draws it).
  let dragFrom = null;
  chartBox.addEventListener('pointerdown', (ev) => { if (ev.button === 0 && chartBox.querySelector('svg')) dragFrom = ev.clientX; });
  chartBox.addEventListener('pointerup', (ev) => {
    const svg = chartBox.querySelector('svg');
    if (dragFrom === null || !svg) return;
    const x0 = Math.min(dragFrom, ev.clientX);
    const x1 = Math.max(dragFrom, ev.clientX);
    dragFrom = null;
    if (x1 - x0 < 8) return;
    const rect = svg.getBoundingClientRect();
    const W = svg.viewBox.baseVal.width;
    const w = windowOf();
    const at = (x) => w.from + ((((x - rect.left) * W) / rect.width - 64) / (W - 80)) * (w.to - w.from);
    setView(at(x0), at(x1));
  });
  const latestBox = h('div', { id: 'latest' });
  clear(sections.telemetry, h('h2', { id: 'telemetry-h' }, 'Telemetry'),
    h('form', { class: 'filters', 'aria-label': 'Chart settings', onsubmit: (ev) => ev.preventDefault() },
      field('Tag', tagSel), field('Key', keySel), field('Range', rangeSel)),
    seriesBox, zoomBar, chartBox, h('p', {}, csvBtn), h('h3', {}, 'Latest values'), latestBox);

  const isNumeric = (v) => typeof v === 'number' || typeof v === 'boolean';
  async function loadTags() {
    const r = await api.get(`${base}/tags`);
    tel.tags = r.tags || {};
    const tags = Object.keys(tel.tags);
    if (!tags.includes(tel.tag) && tags.length) [tel.tag] = tags;
    clear(tagSel, (tags.length ? tags : ['default']).map((t) => h('option', { value: t, selected: t === tel.tag }, t)));
    await loadLatest();
    fillKeys();
  }
  async function loadLatest() {
    try {
      tel.latest = (await api.get(`${base}/telemetry/latest${api.qs({ tag: tel.tag })}`)).data || {};
    } catch {
      tel.latest = {};
    }
  }
  function fillKeys() {
    const keys = tel.tags[tel.tag] || [];
    if (!keys.includes(tel.key)) {
      // A text key (a status, a version) cannot be drawn: open on the first numeric one.
      tel.key = keys.find((k) => tel.latest[k] && isNumeric(tel.latest[k].value)) || keys[0] || '';
      tel.extra.clear();
      if (tel.autoRange) pickRange();
    }
    clear(keySel, keys.length ? keys.map((k) => h('option', { value: k, selected: k === tel.key }, k)) : h('option', { value: '' }, '(no data yet)'));
    fillSeries();
  }
  /** The shortest range that holds the key's latest point (its data may be old). */
  function pickRange() {
    const ts = tel.latest[tel.key]?.ts;
    if (!ts) return;
    const age = Date.now() - ts;
    const fit = RANGES.find(([, , span]) => span >= age * 1.05) || RANGES[RANGES.length - 1];
    tel.range = RANGES.findIndex(([v]) => v === fit[0]) > RANGES.findIndex(([v]) => v === tel.range) ? fit[0] : tel.range;
    rangeSel.value = tel.range;
  }
  function fillSeries() {
    const others = (tel.tags[tel.tag] || []).filter((k) => k !== tel.key && tel.latest[k] && isNumeric(tel.latest[k].value));
    for (const k of [...tel.extra]) if (!others.includes(k)) tel.extra.delete(k);
    clear(seriesBox, others.length ? [h('legend', {}, 'Also draw'), others.map((k) => {
      const box = h('input', { type: 'checkbox', 'data-key': k, checked: tel.extra.has(k), disabled: !tel.extra.has(k) && tel.extra.size >= MAX_EXTRA });
      box.addEventListener('change', () => {
        if (box.checked) tel.extra.add(k); else tel.extra.delete(k);
        fillSeries();
        renderChart();
      });
      return h('label', { class: 'check' }, box, ` ${k}`);
    })] : null);
    seriesBox.hidden = !others.length;
  }
  async function renderChart() {
    const { from, to } = windowOf();
    chartBox.setAttribute('aria-busy', 'true');
    try {
      if (!tel.key) {
        clear(chartBox, h('p', { class: 'muted', id: 'chart-empty' }, 'No telemetry under this tag yet. The chart fills in as the device publishes.'));
        csvBtn.disabled = true;
        return;
      }
      const keys = [tel.key, ...tel.extra];
      const rangeName = RANGES.find(([v]) => v === tel.range)[1];
      const label = tel.view
        ? `${keys.join(', ')} (${tel.tag}) from ${new Date(from).toLocaleString()} to ${new Date(to).toLocaleString()}`
        : `${keys.join(', ')} (${tel.tag}) over the last ${rangeName}`;
      const series = {};
      let band = false;
      const interval = aggInterval(to - from);
      if (interval) {
        const r = await api.get(`${base}/telemetry/aggregate${api.qs({ interval, keys: keys.join(','), tag: tel.tag, from, to, tz: Intl.DateTimeFormat().resolvedOptions().timeZone })}`);
        for (const k of keys) series[k] = (r.data[k] || []).filter((b) => b.numeric > 0).map((b) => ({ ts: b.ts, v: b.avg, min: b.min, max: b.max }));
        band = true;
      } else {
        const r = await api.get(`${base}/telemetry${api.qs({ keys: keys.join(','), tag: tel.tag, from, to, limit: 1000, order: 'desc' })}`);
        for (const k of keys) series[k] = (r.data[k] || []).map((p) => ({ ts: p.ts, v: typeof p.value === 'number' ? p.value : typeof p.value === 'boolean' ? Number(p.value) : NaN })).reverse();
      }
      const points = series[tel.key];
      const numeric = points.filter((p) => Number.isFinite(p.v));
      const more = [...tel.extra].map((k) => ({ name: k, points: series[k] }));
      tel.shown = { keys, series, interval };
      csvBtn.disabled = !keys.some((k) => series[k].some((p) => Number.isFinite(p.v)));
      clear(chartBox, lineChart(points, { from, to, label, band: band && !more.length, width: chartBox.clientWidth || 800, name: tel.key, more }),
        more.length ? h('ul', { class: 'legend', 'aria-label': 'Series' }, keys.map((k, i) => h('li', {}, h('span', { class: `swatch${i ? ` s${i}` : ''}`, 'aria-hidden': 'true' }), k))) : null,
        h('p', { class: 'muted chart-note', id: 'chart-count' }, `${numeric.length} ${interval ? `${AGG_NAME[interval]} average${numeric.length === 1 ? '' : 's'}${more.length ? '' : ' (band: min to max)'}` : `point${numeric.length === 1 ? '' : 's'}`} · ${label}`));
      chartBox.dataset.points = String(numeric.length);
      chartBox.dataset.from = String(from);
      chartBox.dataset.to = String(to);
      chartBox.dataset.series = String(keys.length);
    } catch (e) {
      clear(chartBox, errorBox(e));
    } finally {
      chartBox.setAttribute('aria-busy', 'false');
    }
  }
  /** The shown series as CSV: one row per time, a column per key (empty where a key has no point). */
  csvBtn.addEventListener('click', () => {
    if (!tel.shown) return;
    const { keys, series, interval } = tel.shown;
    const rows = new Map();
    keys.forEach((k, i) => {
      for (const p of series[k]) {
        if (!Number.isFinite(p.v)) continue;
        if (!rows.has(p.ts)) rows.set(p.ts, new Array(keys.length).fill(''));
        rows.get(p.ts)[i] = String(p.v);
      }
    });
    const quote = (c) => (/[",\r\n]/.test(c) ? `"${c.replace(/"/g, '""')}"` : c);
    const lines = [['time', ...keys].map(quote).join(',')];
    for (const ts of [...rows.keys()].sort((a, b) => a - b)) lines.push([new Date(ts).toISOString(), ...rows.get(ts)].join(','));
    download(`${dev.name}-${tel.tag}-${interval ? `${interval}-averages` : 'points'}.csv`.replace(/[^\w.-]+/g, '_'), `${lines.join('\r\n')}\r\n`, 'text/csv');
  });
  async function renderLatest() {
    try {
      const r = await api.get(`${base}/telemetry/latest${api.qs({ tag: tel.tag })}`);
      tel.latest = r.data || {};
      clear(latestBox, table('Latest values', ['Key', 'Value', 'Time'], Object.entries(r.data).map(([k, p]) => h('tr', {},
        h('th', { scope: 'row' }, k), h('td', { class: 'value' }, fmtValue(p.value)), h('td', {}, timeEl(p.ts)))), { hideCaption: true, empty: 'No values yet.' }));
    } catch (e) {
      clear(latestBox, errorBox(e));
    }
  }
  tagSel.addEventListener('change', async () => { tel.tag = tagSel.value; await loadLatest(); fillKeys(); renderChart(); renderLatest(); });
  keySel.addEventListener('change', () => { tel.key = keySel.value; tel.extra.delete(tel.key); fillSeries(); renderChart(); });
  rangeSel.addEventListener('change', () => { tel.range = rangeSel.value; tel.autoRange = false; tel.view = null; liveBtn.setAttribute('aria-pressed', 'true'); renderChart(); });

  // ---- jobs ----
  const jobResult = h('div', { id: 'job-result', 'aria-live': 'polite' });
  const jobsBox = h('div', { id: 'jobs-table' });
  let watched = null; // the job sent from the form
  const jobForm = !operate ? h('div', {}, h('h3', {}, 'Send a command'), roleNote('operator', 'Sending commands')) : onSubmit(h('form', { class: 'inline-form', id: 'command-form', 'aria-labelledby': 'cmd-h' },
    h('h3', { id: 'cmd-h' }, 'Send a command'),
    field('Method', h('input', { name: 'method', required: true, id: 'command-method', autocomplete: 'off', placeholder: 'reboot' })),
    field('Parameters (JSON)', h('textarea', { name: 'params', id: 'command-params', rows: '2', spellcheck: 'false' }, '{}')),
    h('div', { class: 'field check' }, h('input', { type: 'checkbox', name: 'two_way', id: 'command-two-way', checked: true }), h('label', { for: 'command-two-way' }, 'Wait for the device\'s reply (two-way)')),
    field('Time to live (s)', h('input', { name: 'ttl_secs', type: 'number', min: '1', id: 'command-ttl', placeholder: 'server default' })),
    h('button', { type: 'submit', class: 'primary' }, 'Send command')), async (d) => {
    let params = {};
    const raw = String(d.get('params') || '').trim();
    if (raw) {
      try { params = JSON.parse(raw); } catch { throw new Error('Parameters are not valid JSON.'); }
    }
    const body = { method: d.get('method'), params, two_way: d.get('two_way') === 'on' };
    if (d.get('ttl_secs')) body.ttl_secs = Number(d.get('ttl_secs'));
    const job = await api.post(`${base}/jobs`, body);
    watched = job.id;
    showJob(job);
    renderJobs();
  });
  function showJob(job) {
    const done = ['succeeded', 'failed', 'expired', 'cancelled'].includes(job.state);
    clear(jobResult, h('div', { class: `notice job-${job.state}`, 'data-state': job.state },
      h('p', {}, h('strong', {}, `${job.method}: `), statusBadge(job.state), done ? '' : ' — waiting for the device…'),
      job.result !== undefined ? h('pre', { id: 'job-result-value' }, JSON.stringify(job.result, null, 2)) : null,
      job.history.length ? h('p', { class: 'muted' }, job.history.map((t) => `${t.state} ${new Date(t.at).toLocaleTimeString()}${t.note ? ` (${t.note})` : ''}`).join(' → ')) : null));
    if (done) announce(`Command ${job.method} ${job.state}.`);
  }
  async function renderJobs() {
    try {
      const jobs = (await api.get(`${base}/jobs`)).slice().sort((a, b) => b.created_at - a.created_at).slice(0, 50);
      clear(jobsBox, table('Jobs of this device', ['Method', 'State', 'Created', 'Result', ''], jobs.map((j) => h('tr', { 'data-job-id': j.id },
        h('td', {}, j.method),
        h('td', {}, statusBadge(j.state)),
        h('td', {}, timeEl(j.created_at)),
        h('td', {}, j.result !== undefined ? h('code', {}, JSON.stringify(j.result).slice(0, 80)) : '—'),
        h('td', {}, ['queued', 'sent', 'delivered'].includes(j.state) && operate ? h('button', { type: 'button', class: 'small', onclick: async () => {
          try { await api.post(`/jobs/${j.id}/cancel`); renderJobs(); } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Cancel') : null))), { hideCaption: true, empty: 'No jobs yet.' }));
    } catch (e) {
      clear(jobsBox, errorBox(e));
    }
  }
  clear(sections.jobs, h('h2', { id: 'jobs-h' }, 'Jobs'), jobForm, jobResult, h('h3', {}, 'Recent jobs'), jobsBox);

  // ---- updates (OTA) ----
  const updatesBox = h('div', { id: 'device-ota' });
  clear(sections.updates, h('h2', { id: 'updates-h' }, 'Updates'),
    h('p', { class: 'muted' }, 'The device in every OTA campaign that targeted it, newest first, with each step of its update.'), updatesBox);
  async function renderUpdates() {
    let list;
    try {
      list = await api.get(`${base}/ota`);
    } catch (e) {
      clear(updatesBox, errorBox(e));
      return;
    }
    if (!ctx.current()) return;
    if (!list.length) { clear(updatesBox, h('p', { class: 'muted', id: 'device-ota-none' }, 'No campaign has targeted this device.')); return; }
    clear(updatesBox, list.map((u) => h('article', { class: 'card ota-update', 'data-campaign-id': u.campaign_id, 'data-state': u.state, 'aria-labelledby': `ota-${u.campaign_id}-h` },
      h('h3', { id: `ota-${u.campaign_id}-h` }, h('a', { href: `#/campaigns/${u.campaign_id}` }, u.campaign_name), ' ', statusBadge(u.state)),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Package'), h('dd', { class: 'ota-package' }, `${u.type} ${u.title} ${u.version}`),
        h('dt', {}, 'Wave'), h('dd', {}, String(u.wave + 1)),
        h('dt', {}, 'Attempts'), h('dd', { class: 'ota-attempts' }, String(u.attempts)),
        h('dt', {}, 'Reports'), h('dd', {}, u.reported_version || '—'),
        u.error ? [h('dt', {}, 'Error'), h('dd', { class: 'ota-error' }, u.error)] : null,
        u.deadline ? [h('dt', {}, 'Deadline'), h('dd', {}, fmtTime(u.deadline))] : null,
        u.retry_at ? [h('dt', {}, 'Retry at'), h('dd', {}, fmtTime(u.retry_at))] : null),
      h('h4', {}, 'Timeline'), timelineList(u.timeline))));
  }

  // ---- connection history ----
  const liveLog = h('ol', { id: 'live-log', class: 'log' });
  const connBox = h('div', { id: 'connections' });
  const traceBox = h('div', { id: 'device-trace' });
  const auditBox = h('div', { id: 'device-audit' });
  function renderHistory(d) {
    clear(sections.history, h('h2', { id: 'history-h' }, 'Connection history'),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Last connected'), h('dd', {}, fmtTime(d.last_connect_at)),
        h('dt', {}, 'Last disconnected'), h('dd', {}, fmtTime(d.last_disconnect_at)),
        h('dt', {}, 'Last activity'), h('dd', {}, fmtTime(d.last_activity_at))),
      h('h3', {}, 'While this page is open'), liveLog,
      h('h3', {}, 'Why can\'t it connect? Recent connection events'),
      h('div', { class: 'row' }, h('button', { type: 'button', class: 'small', id: 'trace-refresh', onclick: () => renderTrace() }, 'Refresh')),
      traceBox,
      h('h3', {}, 'Connects and disconnects'), connBox,
      h('h3', {}, 'Credential and login events'), auditBox);
  }
  async function renderConnections() {
    try {
      const list = await api.get(`${base}/connections`);
      clear(connBox, table('Connects and disconnects, newest first', ['Time', 'Event', 'Listener', 'Address'], list.map((c) => h('tr', { 'data-event': c.event },
        h('td', {}, fmtTime(c.at)), h('td', {}, statusBadge(c.event)), h('td', {}, c.transport), h('td', {}, c.peer || '—'))), { hideCaption: true, empty: 'Never connected.' }));
    } catch (e) {
      clear(connBox, e.status === 404 && e.missing ? h('p', { class: 'muted' }, 'This server keeps no per-device connection log.') : errorBox(e));
    }
  }
  /** The device's connection trace: refusals and why, closes and why, refused publishes. */
  async function renderTrace() {
    try {
      const list = await api.get(`${base}/trace`);
      clear(traceBox, table('Connection events, newest first', ['Time', 'Event', 'Reason', 'Listener', 'Address', 'Client id', 'Detail'], list.map((e) => h('tr', { 'data-event': e.event, 'data-reason': e.reason || '' },
        h('td', {}, fmtTime(e.at)), h('td', {}, e.event.replace('_', ' ')), h('td', {}, e.reason ? h('code', {}, e.reason) : '—'),
        h('td', {}, e.transport), h('td', {}, e.peer || '—'), h('td', {}, e.client_id || '—'), h('td', {}, e.detail))),
      { hideCaption: true, empty: 'No connection events since the server started.' }));
    } catch (e) {
      clear(traceBox, errorBox(e));
    }
  }

  async function renderAudit() {
    try {
      const p = await api.get(`/audit${api.qs({ device_id: id, limit: 50 })}`);
      clear(auditBox, table('Audit events of this device', ['Time', 'Event', 'Actor', 'Address', 'Detail'], p.items.map((e) => h('tr', {},
        h('td', {}, fmtTime(e.ts)), h('td', {}, e.kind), h('td', {}, e.actor), h('td', {}, e.peer || '—'), h('td', {}, e.detail))), { hideCaption: true, empty: 'No events.' }));
    } catch (e) {
      clear(auditBox, errorBox(e));
    }
  }
  renderHistory(dev);

  await Promise.all([renderConditions(), renderCredentials(), renderAttributes(), loadTags().then(() => Promise.all([renderChart(), renderLatest()])), renderJobs(), renderUpdates(), renderConnections(), renderTrace(), renderAudit()]);

  // ---- live ----
  const refreshData = debounce(async (tag) => {
    if (!tel.tags[tag] || !(tel.tags[tag] || []).length || !tel.key) await loadTags();
    if (tag === tel.tag) { renderChart(); renderLatest(); }
  }, 500);
  const refreshJobs = debounce(renderJobs, 300);
  const refreshConditions = debounce(renderConditions, 300);
  const refreshUpdates = debounce(renderUpdates, 300);
  const refreshDevice = debounce(async () => {
    try {
      Object.assign(dev, await api.get(base));
      clear(statusEl, statusBadge(dev.status));
      renderHistory(dev);
      const c = document.getElementById('device-connections');
      if (c) c.textContent = String(dev.connections);
      renderConnections();
      renderTrace();
      renderAudit();
    } catch { /* shown on the next load */ }
  }, 300);
  ctx.cleanup(api.events({ device_id: id }, async (kind, ev) => {
    if (kind === 'device_connected' || kind === 'device_disconnected') {
      const status = kind === 'device_connected' ? 'online' : 'offline';
      clear(statusEl, statusBadge(status));
      liveLog.prepend(h('li', {}, `${new Date().toLocaleTimeString()} — ${status}${ev.transport ? ` (${ev.transport})` : ''}`));
      announce(`${dev.name} is ${status}.`);
      refreshDevice();
    } else if (kind === 'telemetry_stored') {
      refreshData(ev.tag);
    } else if (kind === 'job_updated') {
      refreshJobs();
      if (ev.job_id === watched) {
        try { showJob(await api.get(`/jobs/${ev.job_id}`)); } catch { /* next event */ }
      }
    } else if (kind === 'condition') {
      if (ev && ev.condition) {
        condRows.update(ev.condition);
        if (ev.action !== 'updated') announce(`Condition ${ev.condition.name}: ${ev.action}.`);
      }
      refreshConditions();
    } else if (kind === 'ota_device') {
      refreshUpdates();
    } else if (kind === 'shared_attributes') {
      renderAttributes();
    } else if (kind === 'lagged') {
      // Events were missed: read everything again.
      refreshDevice();
      refreshJobs();
      refreshConditions();
      refreshUpdates();
      refreshData(tel.tag);
    }
  }));
}
