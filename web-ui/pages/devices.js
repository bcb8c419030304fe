// The devices table: server-side paging (`next_cursor`), search by name, filters by fleet and
// status, and live online/offline status from the event stream. Built for 10,000+ devices: only
// one page (50 rows) is ever in the browser, and filters run on the server. Adding a device
// is offered in the fleets where the caller is an operator (roles.js).

import * as api from '../api.js';
import { h, clear, field, table, onSubmit, announce, timeEl, statusBadge, errorBox, debounce, secretBox } from '../dom.js';
import { allFleets } from './fleets.js';
import { canOnFleet, roleNote } from '../roles.js';

const PAGE = 50;

export async function render(main, ctx) {
  const fleets = await allFleets();
  const fleetName = Object.fromEntries(fleets.map((f) => [f.id, f.name]));
  const ownFleets = fleets.filter((f) => canOnFleet(f.workspace_id, f.id, 'operator'));
  const state = {
    name: ctx.query.name || '',
    fleet_id: ctx.query.fleet_id || '',
    status: ctx.query.status || '',
    cursors: [undefined], // cursor of each page seen so far; the last is the current page's
    next: null,
    rows: new Map(), // device id -> {device, row}
  };

  const search = h('input', { type: 'search', id: 'device-search', value: state.name, placeholder: 'name contains…', autocomplete: 'off' });
  const fleetSel = h('select', { id: 'device-fleet' }, h('option', { value: '' }, 'All fleets'),
    fleets.map((f) => h('option', { value: f.id, selected: f.id === state.fleet_id }, f.name)));
  const statusSel = h('select', { id: 'device-status' },
    [['', 'Any status'], ['online', 'Online'], ['offline', 'Offline']].map(([v, l]) => h('option', { value: v, selected: v === state.status }, l)));
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter devices' },
    field('Search by name', search), field('Fleet', fleetSel), field('Status', statusSel));
  filters.addEventListener('submit', (ev) => { ev.preventDefault(); reload(); });

  const tableBox = h('div', { id: 'devices-table', 'aria-busy': 'true' });
  const prev = h('button', { type: 'button', id: 'page-prev', disabled: true }, '← Previous');
  const next = h('button', { type: 'button', id: 'page-next', disabled: true }, 'Next →');
  const pageInfo = h('span', { id: 'page-info', 'aria-live': 'polite' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of devices' }, prev, pageInfo, next);

  const created = h('div', { id: 'device-created' });
  const createForm = onSubmit(h('form', { class: 'inline-form', id: 'device-form', 'aria-labelledby': 'device-new' },
    h('h2', { id: 'device-new' }, 'New device'),
    field('Fleet', h('select', { name: 'fleet_id', required: true, id: 'new-device-fleet' },
      ownFleets.map((f) => h('option', { value: f.id, selected: f.id === state.fleet_id }, f.name)))),
    field('Name', h('input', { name: 'name', required: true, id: 'new-device-name', autocomplete: 'off' })),
    field('Label', h('input', { name: 'label', id: 'new-device-label' })),
    h('button', { type: 'submit', class: 'primary', disabled: !ownFleets.length }, 'Create device')), async (d) => {
    const r = await api.post('/devices', { fleet_id: d.get('fleet_id'), name: d.get('name'), label: d.get('label') || '' });
    announce(`Device ${r.device.name} created.`);
    clear(created,
      h('p', {}, 'Created ', h('a', { href: `#/devices/${r.device.id}`, id: 'created-device-link' }, r.device.name), '.'),
      r.credentials.token ? secretBox('Access token', r.credentials.token) : null);
    created.querySelector('input')?.setAttribute('id', 'created-token');
    createForm.reset();
    load(state.cursors[state.cursors.length - 1]);
  });

  clear(main, h('h1', {}, 'Devices'), filters, tableBox, pager,
    !fleets.length ? h('p', { class: 'muted' }, 'Create a fleet before adding devices: ', h('a', { href: '#/fleets' }, 'Workspaces & fleets'), '.')
      : ownFleets.length ? h('details', { class: 'card', open: true, id: 'add-device' }, h('summary', {}, 'Add a device'), createForm, created)
        : roleNote('operator', 'Adding devices'));

  const syncHash = () => {
    const q = new URLSearchParams(Object.entries({ name: state.name, fleet_id: state.fleet_id, status: state.status }).filter(([, v]) => v)).toString();
    history.replaceState(null, '', `#/devices${q ? `?${q}` : ''}`);
  };

  let loadSeq = 0;
  async function load(cursor) {
    const seq = ++loadSeq;
    tableBox.setAttribute('aria-busy', 'true');
    let page;
    try {
      page = await api.get(`/devices${api.qs({ name: state.name, fleet_id: state.fleet_id, status: state.status, limit: PAGE, cursor })}`);
    } catch (e) {
      if (seq === loadSeq) clear(tableBox, errorBox(e));
      return;
    }
    if (seq !== loadSeq || !ctx.current()) return;
    state.next = page.next_cursor;
    state.rows.clear();
    const rows = page.items.map((d) => {
      const statusCell = h('td', { class: 'status-cell' }, statusBadge(d.status));
      const row = h('tr', { 'data-device-id': d.id, 'data-status': d.status },
        h('th', { scope: 'row' }, h('a', { href: `#/devices/${d.id}` }, d.name)),
        h('td', {}, d.label || '—'),
        h('td', {}, fleetName[d.fleet_id] || '—'),
        statusCell,
        h('td', {}, timeEl(d.last_activity_at)),
        h('td', {}, d.enabled ? 'yes' : 'no'));
      state.rows.set(d.id, { device: d, row, statusCell });
      return row;
    });
    const pageNo = state.cursors.length;
    clear(tableBox, table(`Devices, page ${pageNo}`, ['Name', 'Label', 'Fleet', 'Status', 'Last activity', 'Enabled'], rows,
      { hideCaption: true, class: 'devices', empty: state.name || state.fleet_id || state.status ? 'No device matches.' : 'No devices yet.' }));
    tableBox.setAttribute('aria-busy', 'false');
    prev.disabled = state.cursors.length <= 1;
    next.disabled = !state.next;
    pageInfo.textContent = `Page ${pageNo} · ${page.items.length} device${page.items.length === 1 ? '' : 's'}`;
  }

  function reload() {
    // A search typed just before leaving the page must not rewrite the next page's address.
    if (!ctx.current()) return;
    state.name = search.value.trim();
    state.fleet_id = fleetSel.value;
    state.status = statusSel.value;
    state.cursors = [undefined];
    syncHash();
    load(undefined);
  }

  search.addEventListener('input', debounce(reload, 300));
  fleetSel.addEventListener('change', reload);
  statusSel.addEventListener('change', reload);
  next.addEventListener('click', () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    load(state.next);
  });
  prev.addEventListener('click', () => {
    if (state.cursors.length <= 1) return;
    state.cursors.pop();
    load(state.cursors[state.cursors.length - 1]);
  });

  await load(undefined);

  const live = h('span', { class: 'live-dot', id: 'live-state', title: 'live updates' }, 'connecting…');
  main.querySelector('h1').append(' ', live);
  ctx.cleanup(api.events({ kinds: 'device_connected,device_disconnected' }, (kind, ev) => {
    if (kind === 'lagged') {
      // Events were missed: read the page again.
      load(state.cursors[state.cursors.length - 1]);
      return;
    }
    const entry = ev && state.rows.get(ev.device_id);
    if (!entry) return;
    const status = kind === 'device_connected' ? 'online' : 'offline';
    entry.device.status = status;
    entry.row.dataset.status = status;
    clear(entry.statusCell, statusBadge(status));
    announce(`${entry.device.name} is ${status}.`);
  }, (up) => {
    live.textContent = up ? 'live' : 'reconnecting…';
    live.classList.toggle('up', up);
  }));
}
