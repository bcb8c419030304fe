// The devices table at scale: filters, sorting and paging all run on the server (`GET /devices`
// with `sort`, `order`, `offset`; only one page is ever in the browser), a total count, chosen
// latest values as columns, and the whole view (filters, sort, page, columns) kept in the page
// address so that it can be bookmarked and shared. Rows can be selected (on this page, or every
// device the filters match) for a bulk action, which goes to the server as one request
// (`POST /devices/bulk`) after a dry run tells the confirmation dialog how many devices it
// affects. Devices are imported from CSV (a dry run lists every bad row) and the filtered list
// is exported as CSV. Live online/offline status comes from the event stream.

import * as api from '../api.js';
import { h, clear, field, onSubmit, announce, timeEl, statusBadge, errorBox, debounce, secretBox, fmtValue, toast, errorText, download } from '../dom.js';
import { allFleets, allWorkspaces } from './fleets.js';
import { canOnFleet, roleNote } from '../roles.js';

const PAGE = 50;
const SORTS = [['name', 'Name'], ['fleet', 'Fleet'], ['status', 'Status'], ['last_activity', 'Last activity'], ['firmware', 'Firmware'], ['created', 'Created']];
const ACTIONS = [
  ['label', 'Set label'], ['move', 'Move to fleet'], ['set_shared', 'Set shared attributes'], ['command', 'Send a command'],
  ['enable', 'Enable'], ['disable', 'Disable'], ['revoke_credentials', 'Revoke credentials'], ['delete', 'Delete'],
];
// The filters kept in the address, with the control that edits each.
const FILTERS = ['name', 'label', 'fleet_id', 'status', 'enabled', 'firmware', 'silent_mins', 'gateway_id'];

export async function render(main, ctx) {
  const fleets = await allFleets();
  const fleetName = Object.fromEntries(fleets.map((f) => [f.id, f.name]));
  const ownFleets = fleets.filter((f) => canOnFleet(f.workspace_id, f.id, 'operator'));
  const q = ctx.query;
  const state = {
    ...Object.fromEntries(FILTERS.map((k) => [k, q[k] || ''])),
    // Creation order until a column is chosen (new devices last, as they were added).
    sort: SORTS.some(([k]) => k === q.sort) ? q.sort : 'created',
    order: q.order === 'desc' ? 'desc' : 'asc',
    page: Math.max(1, Number.parseInt(q.page, 10) || 1),
    keys: q.keys || '',
    total: 0,
    rows: new Map(), // device id -> {device, row, statusCell}
    selected: new Set(), // device ids picked on any page
    allMatching: false, // every device the filters match, rather than `selected`
  };

  const input = (id, k, attrs = {}) => h('input', { id, value: state[k], autocomplete: 'off', ...attrs });
  const search = input('device-search', 'name', { type: 'search', placeholder: 'name contains…' });
  const labelIn = input('device-label-filter', 'label', { type: 'search', placeholder: 'label contains…' });
  const fleetSel = h('select', { id: 'device-fleet' }, h('option', { value: '' }, 'All fleets'),
    fleets.map((f) => h('option', { value: f.id, selected: f.id === state.fleet_id }, f.name)));
  const opts = (id, k, list) => h('select', { id }, list.map(([v, l]) => h('option', { value: v, selected: v === state[k] }, l)));
  const statusSel = opts('device-status', 'status', [['', 'Any status'], ['online', 'Online'], ['offline', 'Offline']]);
  const enabledSel = opts('device-enabled', 'enabled', [['', 'Enabled or not'], ['true', 'Enabled'], ['false', 'Disabled']]);
  const firmwareIn = input('device-firmware', 'firmware', { placeholder: 'e.g. 1.2.0', size: 10 });
  const silentIn = input('device-silent', 'silent_mins', { type: 'number', min: 1, placeholder: 'minutes', size: 6 });
  const keysIn = input('device-keys', 'keys', { placeholder: 'temperature, humidity' });
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter devices' },
    field('Search by name', search), field('Label', labelIn), field('Fleet', fleetSel), field('Status', statusSel),
    field('Enabled', enabledSel), field('Firmware', firmwareIn), field('Silent for (min)', silentIn),
    field('Latest values of', keysIn, 'telemetry keys shown as columns, comma-separated (at most 10)'));
  filters.addEventListener('submit', (ev) => { ev.preventDefault(); reload(); });

  const count = h('p', { id: 'device-count', class: 'muted', 'aria-live': 'polite' });
  const tableBox = h('div', { id: 'devices-table', 'aria-busy': 'true' });
  const prev = h('button', { type: 'button', id: 'page-prev', disabled: true }, '← Previous');
  const next = h('button', { type: 'button', id: 'page-next', disabled: true }, 'Next →');
  const pageInfo = h('span', { id: 'page-info', 'aria-live': 'polite' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of devices' }, prev, pageInfo, next);
  const exportBtn = h('button', { type: 'button', id: 'devices-export' }, 'Export CSV');

  // ---- the bulk bar ----
  const selInfo = h('span', { id: 'selection-info', 'aria-live': 'polite' }, 'No device selected.');
  const selectAll = h('button', { type: 'button', id: 'select-all-matching', class: 'small' }, 'Select every matching device');
  const clearSel = h('button', { type: 'button', id: 'selection-clear', class: 'small' }, 'Clear selection');
  const actionSel = h('select', { id: 'bulk-action' }, ACTIONS.map(([v, l]) => h('option', { value: v }, l)));
  const actionArgs = h('div', { class: 'bulk-args', id: 'bulk-args' });
  const applyBtn = h('button', { type: 'submit', class: 'primary', id: 'bulk-apply', disabled: true }, 'Apply…');
  const bulkResult = h('div', { id: 'bulk-result' });
  const bulkForm = h('form', { class: 'inline-form bulk', id: 'bulk-form', 'aria-labelledby': 'bulk-title' },
    h('h2', { id: 'bulk-title' }, 'Selected devices'), h('p', {}, selInfo, ' ', selectAll, ' ', clearSel),
    field('Action', actionSel), actionArgs, applyBtn);
  bulkForm.addEventListener('submit', (ev) => { ev.preventDefault(); startBulk(); });

  const argInput = (name, label, attrs = {}) => field(label, h('input', { name, id: `bulk-${name}`, autocomplete: 'off', ...attrs }));
  function drawArgs() {
    const a = actionSel.value;
    clear(actionArgs,
      a === 'label' ? argInput('label', 'New label') : null,
      a === 'move' ? field('Destination fleet', h('select', { name: 'fleet_id', id: 'bulk-fleet_id', required: true },
        ownFleets.map((f) => h('option', { value: f.id }, f.name)))) : null,
      a === 'set_shared' ? argInput('values', 'Attributes (JSON object)', { required: true, placeholder: '{"interval": 30}' }) : null,
      a === 'command' ? [argInput('method', 'Method', { required: true }), argInput('params', 'Parameters (JSON)', { placeholder: '{}' })] : null);
  }
  actionSel.addEventListener('change', drawArgs);
  drawArgs();

  // ---- the confirmation dialog ----
  const dlgText = h('p', { id: 'bulk-confirm-text' });
  const dlgDetail = h('p', { id: 'bulk-confirm-detail', class: 'muted' });
  const dlgOk = h('button', { type: 'button', class: 'primary', id: 'bulk-confirm' }, 'Confirm');
  const dlgCancel = h('button', { type: 'button', id: 'bulk-cancel' }, 'Cancel');
  const dialog = h('dialog', { id: 'bulk-dialog', 'aria-labelledby': 'bulk-dialog-title', 'aria-describedby': 'bulk-confirm-text' },
    h('h2', { id: 'bulk-dialog-title' }, 'Confirm the bulk action'), dlgText, dlgDetail, h('div', { class: 'row' }, dlgOk, ' ', dlgCancel));
  dlgCancel.addEventListener('click', () => dialog.close());

  // ---- import ----
  const importFile = h('input', { type: 'file', id: 'import-file', accept: '.csv,text/csv' });
  const importText = h('textarea', { id: 'import-csv', rows: 6, cols: 60, spellcheck: 'false', placeholder: 'name,label,fleet,token,shared:interval\nthermo-9,roof,sensors,,30' });
  // Without a default fleet, each row's fleet column names its fleet within the chosen
  // workspace: one choice per workspace the user may import into.
  const importWorkspaces = [...new Set(ownFleets.map((f) => f.workspace_id))];
  const wsNames = importWorkspaces.length > 1 ? Object.fromEntries((await allWorkspaces()).map((w) => [w.id, w.name])) : {};
  const importFleet = h('select', { id: 'import-fleet' },
    importWorkspaces.map((w) => h('option', { value: `ws:${w}` }, importWorkspaces.length > 1 ? `(the fleet column names each, in ${wsNames[w] || w.slice(0, 8)})` : '(the fleet column names each)')),
    ownFleets.map((f) => h('option', { value: f.id, selected: f.id === state.fleet_id }, f.name)));
  const importReport = h('div', { id: 'import-report', 'aria-live': 'polite' });
  const dryBtn = h('button', { type: 'button', id: 'import-check' }, 'Check (dry run)');
  const importBtn = h('button', { type: 'button', class: 'primary', id: 'import-run' }, 'Import');
  importFile.addEventListener('change', async () => {
    const f = importFile.files[0];
    if (f) importText.value = await f.text();
  });
  const importBox = h('details', { class: 'card', id: 'import-devices' }, h('summary', {}, 'Import devices from CSV'),
    h('p', { class: 'muted' }, 'Columns: name (required), label, fleet (name or id), one credential per row — token (an access token; generated when no credential is given), client_id, username and password (MQTT basic) or certificate_pem (a device certificate, quoted) — gateway (true for a gateway), shared:KEY and server:KEY for attributes. A dry run checks every row and changes nothing.'),
    field('CSV file', importFile), field('…or paste CSV', importText), field('Default fleet', importFleet),
    h('div', { class: 'row' }, dryBtn, ' ', importBtn), importReport);

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
    load();
  });

  clear(main, h('h1', {}, 'Devices'), filters, h('div', { class: 'row' }, count, ' ', exportBtn), tableBox, pager,
    ownFleets.length ? bulkForm : null, dialog,
    !fleets.length ? h('p', { class: 'muted' }, 'Create a fleet before adding devices: ', h('a', { href: '#/fleets' }, 'Workspaces & fleets'), '.')
      : ownFleets.length ? [h('details', { class: 'card', open: true, id: 'add-device' }, h('summary', {}, 'Add a device'), createForm, created), importBox]
        : roleNote('operator', 'Adding devices'));

  /** The list's filters as query parameters (also the bulk filter and the export's query). */
  const filterParams = () => Object.fromEntries(FILTERS.map((k) => [k, state[k]]).filter(([, v]) => v !== ''));

  const syncHash = () => {
    const params = { ...filterParams(), sort: state.sort !== 'created' ? state.sort : '', order: state.order !== 'asc' ? state.order : '', page: state.page > 1 ? state.page : '', keys: state.keys };
    const qstr = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v !== undefined)).toString();
    history.replaceState(null, '', `#/devices${qstr ? `?${qstr}` : ''}`);
  };

  const keyList = () => state.keys.split(',').map((k) => k.trim()).filter(Boolean);

  function sortHeader(key, label) {
    const active = state.sort === key;
    const ariaSort = active ? (state.order === 'asc' ? 'ascending' : 'descending') : 'none';
    const btn = h('button', { type: 'button', class: 'sort', 'data-sort': key, 'aria-label': `${label}: sort ${active && state.order === 'asc' ? 'descending' : 'ascending'}` },
      label, active ? (state.order === 'asc' ? ' ▲' : ' ▼') : '');
    btn.addEventListener('click', () => {
      state.order = active && state.order === 'asc' ? 'desc' : 'asc';
      state.sort = key;
      state.page = 1;
      syncHash();
      load();
    });
    return h('th', { scope: 'col', 'aria-sort': ariaSort }, btn);
  }

  function drawSelection() {
    const n = state.allMatching ? state.total : state.selected.size;
    selInfo.textContent = n === 0 ? 'No device selected.'
      : state.allMatching ? `All ${n} matching device${n === 1 ? '' : 's'} selected.` : `${n} device${n === 1 ? '' : 's'} selected.`;
    applyBtn.disabled = n === 0;
    selectAll.hidden = state.allMatching || state.total === 0;
    for (const { row } of state.rows.values()) {
      const box = row.querySelector('input[type=checkbox]');
      box.checked = state.allMatching || state.selected.has(row.dataset.deviceId);
      box.disabled = state.allMatching;
    }
    const pageBox = tableBox.querySelector('#select-page');
    if (pageBox) {
      const ids = [...state.rows.keys()];
      pageBox.checked = state.allMatching || (ids.length > 0 && ids.every((id) => state.selected.has(id)));
      pageBox.disabled = state.allMatching;
    }
  }

  let loadSeq = 0;
  async function load() {
    const seq = ++loadSeq;
    tableBox.setAttribute('aria-busy', 'true');
    let page;
    const keys = keyList();
    try {
      page = await api.get(`/devices${api.qs({ ...filterParams(), sort: state.sort, order: state.order, offset: (state.page - 1) * PAGE, limit: PAGE, keys: keys.join(',') })}`);
    } catch (e) {
      if (seq === loadSeq) clear(tableBox, errorBox(e));
      return;
    }
    if (seq !== loadSeq || !ctx.current()) return;
    state.total = page.total;
    const pages = Math.max(1, Math.ceil(page.total / PAGE));
    if (state.page > pages && page.total > 0) { state.page = pages; syncHash(); load(); return; }
    state.rows.clear();
    const rows = page.items.map((d) => {
      const statusCell = h('td', { class: 'status-cell' }, statusBadge(d.status));
      const box = h('input', { type: 'checkbox', 'aria-label': `Select ${d.name}`, class: 'row-select' });
      box.addEventListener('change', () => {
        if (box.checked) state.selected.add(d.id); else state.selected.delete(d.id);
        drawSelection();
      });
      const row = h('tr', { 'data-device-id': d.id, 'data-status': d.status },
        h('td', {}, box),
        h('th', { scope: 'row' }, h('a', { href: `#/devices/${d.id}` }, d.name)),
        h('td', {}, d.label || '—'),
        h('td', {}, fleetName[d.fleet_id] || '—'),
        statusCell,
        h('td', {}, timeEl(d.last_activity_at)),
        h('td', { class: 'value' }, d.firmware_version || '—'),
        h('td', {}, d.enabled ? 'yes' : 'no'),
        keys.map((k) => h('td', { class: 'value', 'data-key': k }, d.latest && d.latest[k] ? fmtValue(d.latest[k].value) : '—')));
      state.rows.set(d.id, { device: d, row, statusCell });
      return row;
    });
    const pageBox = h('input', { type: 'checkbox', id: 'select-page', 'aria-label': 'Select every device on this page' });
    pageBox.addEventListener('change', () => {
      for (const id of state.rows.keys()) {
        if (pageBox.checked) state.selected.add(id); else state.selected.delete(id);
      }
      drawSelection();
    });
    const sortable = Object.fromEntries(SORTS);
    const headers = [h('th', { scope: 'col' }, pageBox), sortHeader('name', sortable.name), 'Label', sortHeader('fleet', sortable.fleet),
      sortHeader('status', sortable.status), sortHeader('last_activity', sortable.last_activity), sortHeader('firmware', sortable.firmware), 'Enabled', ...keys];
    const filtered = Object.keys(filterParams()).length > 0;
    clear(tableBox, h('div', { class: 'table-wrap' },
      h('table', { class: 'devices' },
        h('caption', { class: 'visually-hidden' }, `Devices, page ${state.page} of ${pages}`),
        h('thead', {}, h('tr', {}, headers.map((x) => (x instanceof Element ? x : h('th', { scope: 'col' }, x))))),
        h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'empty' }, filtered ? 'No device matches.' : 'No devices yet.'))))));
    tableBox.setAttribute('aria-busy', 'false');
    prev.disabled = state.page <= 1;
    next.disabled = state.page >= pages;
    count.textContent = `${page.total} device${page.total === 1 ? '' : 's'}${filtered ? ' match' : ''}`;
    pageInfo.textContent = `Page ${state.page} of ${pages} · ${page.items.length} device${page.items.length === 1 ? '' : 's'}`;
    drawSelection();
  }

  function reload() {
    // A search typed just before leaving the page must not rewrite the next page's address.
    if (!ctx.current()) return;
    Object.assign(state, {
      name: search.value.trim(), label: labelIn.value.trim(), fleet_id: fleetSel.value, status: statusSel.value,
      enabled: enabledSel.value, firmware: firmwareIn.value.trim(), silent_mins: silentIn.value.trim(), keys: keysIn.value.trim(), page: 1,
    });
    // A selection by filter would change meaning with the filters.
    state.allMatching = false;
    syncHash();
    load();
  }

  for (const el of [search, labelIn, firmwareIn, silentIn, keysIn]) el.addEventListener('input', debounce(reload, 300));
  for (const el of [fleetSel, statusSel, enabledSel]) el.addEventListener('change', reload);
  next.addEventListener('click', () => { state.page += 1; syncHash(); load(); });
  prev.addEventListener('click', () => { if (state.page > 1) { state.page -= 1; syncHash(); load(); } });
  selectAll.addEventListener('click', () => { state.allMatching = true; drawSelection(); });
  clearSel.addEventListener('click', () => { state.allMatching = false; state.selected.clear(); drawSelection(); });
  exportBtn.addEventListener('click', async () => {
    try {
      await api.downloadFile(`/devices/export${api.qs({ ...filterParams(), sort: state.sort, order: state.order, keys: keyList().join(',') })}`, 'corral-devices.csv');
    } catch (e) { toast(errorText(e), 'error'); }
  });

  /** The action of the bulk form as the API takes it; throws on a bad JSON field. */
  function bulkAction() {
    const a = actionSel.value;
    const val = (n) => actionArgs.querySelector(`[name="${n}"]`)?.value ?? '';
    const json = (n, fallback) => {
      const t = val(n).trim();
      if (!t) return fallback;
      try { return JSON.parse(t); } catch { throw new Error(`${n}: not valid JSON`); }
    };
    switch (a) {
      case 'label': return { type: 'label', label: val('label') };
      case 'move': return { type: 'move', fleet_id: val('fleet_id') };
      case 'set_shared': return { type: 'set_shared', values: json('values', {}) };
      case 'command': return { type: 'command', method: val('method'), params: json('params', null) };
      default: return { type: a };
    }
  }

  async function startBulk() {
    let body;
    try {
      body = { action: bulkAction(), ...(state.allMatching ? { filter: filterParams() } : { device_ids: [...state.selected] }) };
    } catch (e) { toast(e.message, 'error'); return; }
    applyBtn.disabled = true;
    let check;
    try {
      check = await api.post('/devices/bulk', { ...body, dry_run: true });
    } catch (e) {
      toast(errorText(e), 'error');
      applyBtn.disabled = false;
      return;
    }
    applyBtn.disabled = false;
    const label = ACTIONS.find(([v]) => v === body.action.type)[1];
    dlgText.textContent = `${label}: ${check.succeeded} device${check.succeeded === 1 ? '' : 's'} will be affected.`;
    dlgDetail.textContent = check.failed ? `${check.failed} of the ${check.matched} selected cannot be changed by you and will be left as they are.`
      : body.action.type === 'delete' ? 'Deleting removes their data for good.' : '';
    dlgOk.textContent = `${label} ${check.succeeded} device${check.succeeded === 1 ? '' : 's'}`;
    dlgOk.onclick = async () => {
      dialog.close();
      try {
        const r = await api.post('/devices/bulk', body);
        const failures = r.results.filter((x) => !x.ok);
        clear(bulkResult, h('p', { id: 'bulk-summary', role: 'status' }, `${label}: ${r.succeeded} done, ${r.failed} failed.`),
          failures.length ? h('ul', {}, failures.slice(0, 50).map((x) => h('li', {}, `${x.name || x.device_id}: ${x.message || x.code}`))) : null);
        announce(`${label}: ${r.succeeded} done, ${r.failed} failed.`);
        state.selected.clear();
        state.allMatching = false;
        load();
      } catch (e) { toast(errorText(e), 'error'); }
    };
    dialog.showModal();
    dlgCancel.focus();
  }
  bulkForm.append(bulkResult);

  async function runImport(dry) {
    const csv = importText.value;
    if (!csv.trim()) { toast('Choose a CSV file or paste its text first.', 'error'); return; }
    const v = importFleet.value;
    const body = { csv, dry_run: dry, ...(v.startsWith('ws:') ? { workspace_id: v.slice(3) } : { fleet_id: v }) };
    dryBtn.disabled = true; importBtn.disabled = true;
    try {
      const r = await api.post('/devices/import', body);
      const errs = r.errors.length ? h('table', { id: 'import-errors' },
        h('caption', {}, `${r.errors.length} problem${r.errors.length === 1 ? '' : 's'}`),
        h('thead', {}, h('tr', {}, ['Line', 'Column', 'Problem'].map((x) => h('th', { scope: 'col' }, x)))),
        h('tbody', {}, r.errors.map((e) => h('tr', { 'data-line': e.line }, h('td', {}, String(e.line)), h('td', {}, e.column), h('td', {}, e.message))))) : null;
      const summary = dry ? `Dry run: ${r.valid} of ${r.rows} rows can be imported; nothing was changed.` : `Imported ${r.created.length} device${r.created.length === 1 ? '' : 's'}.`;
      const tokens = r.created.filter((c) => c.token);
      clear(importReport, h('p', { id: 'import-summary', role: 'status' }, summary), errs,
        tokens.length ? h('p', {}, h('button', { type: 'button', id: 'import-tokens', onclick: () => download('corral-imported-tokens.csv',
          `name,device_id,token\r\n${tokens.map((c) => `${c.name},${c.device_id},${c.token}`).join('\r\n')}\r\n`, 'text/csv') }, 'Download the access tokens (shown only now)')) : null);
      announce(summary);
      if (!dry) load();
    } catch (e) {
      clear(importReport, errorBox(e));
    } finally {
      dryBtn.disabled = false; importBtn.disabled = false;
    }
  }
  dryBtn.addEventListener('click', () => runImport(true));
  importBtn.addEventListener('click', () => runImport(false));

  await load();

  const live = h('span', { class: 'live-dot', id: 'live-state', title: 'live updates' }, 'connecting…');
  main.querySelector('h1').append(' ', live);
  ctx.cleanup(api.events({ kinds: 'device_connected,device_disconnected' }, (kind, ev) => {
    if (kind === 'lagged') {
      // Events were missed: read the page again.
      load();
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
