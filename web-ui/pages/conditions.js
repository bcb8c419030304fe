// Conditions (alarms) that devices report: every condition the signed-in user may see, newest
// first, filtered on the server by state, severity, name and device and paged with
// `next_cursor`; open ones can be acknowledged and closed by operators of the device's fleet
// (other roles see why they cannot; the server refuses them anyway, and its message is shown). Live: a `condition` event changes its row in place, and one
// this list does not show yet reloads it. The device page lists one device's conditions with
// the same rows (`ConditionRows`).

import * as api from '../api.js';
import { h, clear, field, select, table, toast, announce, timeEl, fmtTime, errorBox, errorText, debounce } from '../dom.js';
import { canOnFleet } from '../roles.js';

const PAGE = 50;
export const SEVERITIES = ['critical', 'major', 'minor', 'warning', 'info'];

export function severityBadge(s) {
  return h('span', { class: `badge severity severity-${s}` }, s);
}

function stateCell(c) {
  return h('td', { class: 'state-cell' },
    h('span', { class: `badge ${c.open ? 'cond-open' : 'cond-closed'}` }, c.open ? 'open' : 'closed'),
    c.open ? null : h('small', { class: 'muted' }, ' ', c.closed_by ? `by ${c.closed_by} ` : '', timeEl(c.closed_at)));
}

function detailsCell(c) {
  const d = c.details;
  if (!d || (typeof d === 'object' && !Array.isArray(d) && !Object.keys(d).length)) return h('td', { class: 'wide-only' }, '—');
  const text = JSON.stringify(d);
  return h('td', { class: 'wide-only' }, h('code', { title: text.length > 60 ? text : null }, text.length > 60 ? `${text.slice(0, 59)}…` : text));
}

/**
 * Runs `f`, which rebuilds rows inside `box`; when focus was on a row (or in it), puts it back
 * on the same control of that condition's new row, or on the row's name.
 */
function keepFocus(box, f) {
  const active = document.activeElement;
  const tr = active && box.contains(active) ? active.closest('tr[data-condition-id]') : null;
  const action = active?.dataset?.action;
  f();
  if (!tr) return;
  const now = box.querySelector(`tr[data-condition-id="${tr.dataset.conditionId}"]`);
  if (!now) return;
  const target = (action && now.querySelector(`button[data-action="${action}"]`)) || now.querySelector('button') || now.querySelector('th');
  target.focus();
}

/**
 * On a phone the rows show as cards (app.css changes the cells' `display`), which can take the
 * table's meaning away from screen readers: explicit roles keep it.
 */
function rowRoles(tr) {
  tr.setAttribute('role', 'row');
  for (const c of tr.children) {
    c.setAttribute('role', c.tagName === 'TD' ? 'cell' : c.getAttribute('scope') === 'col' ? 'columnheader' : 'rowheader');
  }
  return tr;
}

function tableRoles(wrap) {
  const t = wrap.querySelector('table');
  t.setAttribute('role', 'table');
  for (const g of t.querySelectorAll('thead, tbody')) g.setAttribute('role', 'rowgroup');
  for (const tr of t.querySelectorAll('tr')) rowRoles(tr);
  return wrap;
}

/**
 * Table rows of conditions, kept by id so that actions and live events change a row in place.
 * `withDevice` adds a column naming the device (read once per device and remembered);
 * `onChange(c)` is told of a condition an action changed.
 */
export class ConditionRows {
  constructor({ withDevice = true, onChange = () => {}, canAct } = {}) {
    this.withDevice = withDevice;
    this.onChange = onChange;
    this.rows = new Map(); // condition id -> tr
    this.names = new Map(); // device id -> name (null: not readable)
    this.fleets = new Map(); // device id -> [workspace id, fleet id]
    // Whether the caller may acknowledge and close `c`: the operator role on its device's
    // fleet; allowed while the device is not known.
    this.canAct = canAct || ((c) => {
      const f = this.fleets.get(c.device_id);
      return !f || canOnFleet(f[0], f[1], 'operator');
    });
    this.pending = new Map(); // device id -> promise of the name
  }

  /** Reads the names of these devices (the ones not known yet); never fails. */
  async loadNames(ids) {
    if (!this.withDevice) return;
    await Promise.all([...new Set(ids)].filter((d) => !this.names.has(d)).map((d) => {
      if (!this.pending.has(d)) {
        this.pending.set(d, api.get(`/devices/${d}`).then((dev) => { this.fleets.set(d, [dev.workspace_id, dev.fleet_id]); return dev.name; }, () => null).then((n) => { this.names.set(d, n); this.pending.delete(d); return n; }));
      }
      return this.pending.get(d);
    }));
  }

  headers() {
    // Updated, reports and details fold away on a phone (class `wide-only`).
    const wide = (x) => h('th', { scope: 'col', class: 'wide-only' }, x);
    return ['Severity', 'Condition', this.withDevice ? 'Device' : null, 'Opened', wide('Updated'), wide('Reports'),
      'Acknowledged', 'State', wide('Details'), h('span', { class: 'visually-hidden' }, 'Actions')].filter(Boolean);
  }

  deviceCell(c) {
    const link = h('a', { href: `#/devices/${c.device_id}` }, this.names.get(c.device_id) || c.device_id.slice(0, 8));
    if (!this.names.has(c.device_id)) {
      this.loadNames([c.device_id]).then(() => { const n = this.names.get(c.device_id); if (n) link.textContent = n; });
    }
    return h('td', { 'data-label': 'Device' }, link);
  }

  button(c, verb, label) {
    return h('button', { type: 'button', class: `small${verb === 'close' ? ' danger' : ''}`, 'data-action': verb, 'aria-label': `${label} ${c.name}`, onclick: async (ev) => {
      const btn = ev.currentTarget;
      btn.disabled = true;
      try {
        const now = await api.post(`/conditions/${c.id}/${verb}`);
        announce(`Condition ${c.name} ${verb === 'close' ? 'closed' : 'acknowledged'}.`);
        this.update(now);
        this.onChange(now);
      } catch (e) {
        toast(errorText(e), 'error');
        btn.disabled = false;
      }
    } }, label);
  }

  row(c) {
    const ack = c.acknowledged_at ? [c.acknowledged_by || '—', ' ', h('small', { class: 'muted' }, timeEl(c.acknowledged_at))] : (c.open ? 'not yet' : '—');
    const tr = h('tr', { 'data-condition-id': c.id, 'data-state': c.open ? 'open' : 'closed', 'data-acknowledged': c.acknowledged_at ? 'yes' : 'no', 'data-severity': c.severity },
      h('td', {}, severityBadge(c.severity)),
      h('th', { scope: 'row', tabindex: '-1' }, c.name),
      this.withDevice ? this.deviceCell(c) : null,
      h('td', { 'data-label': 'Opened' }, h('time', { datetime: new Date(c.opened_at).toISOString() }, fmtTime(c.opened_at))),
      h('td', { class: 'wide-only' }, timeEl(c.updated_at)),
      h('td', { class: 'wide-only' }, String(c.reports)),
      h('td', { class: 'ack-cell', 'data-label': 'Acknowledged' }, ack),
      stateCell(c),
      detailsCell(c),
      h('td', { class: 'row-actions' }, !c.open ? null
        : this.canAct(c) ? h('div', { class: 'actions' },
          c.acknowledged_at ? null : this.button(c, 'acknowledge', 'Acknowledge'),
          this.button(c, 'close', 'Close'))
          : h('small', { class: 'role-note', 'data-needs': 'operator' }, 'Acknowledging and closing need the operator role.')));
    this.rows.set(c.id, tr);
    return rowRoles(tr);
  }

  /** Replaces the row of `c` when it is shown; false when it is not. */
  update(c) {
    const old = this.rows.get(c.id);
    if (!old || !old.isConnected) return false;
    const box = old.closest('tbody');
    keepFocus(box, () => old.replaceWith(this.row(c)));
    return true;
  }

  /** A table of these conditions (replacing the rows kept so far). */
  table(caption, list, opts = {}) {
    this.rows.clear();
    return tableRoles(table(caption, this.headers(), list.map((c) => this.row(c)), { hideCaption: true, class: 'conditions', ...opts }));
  }

  /** Rebuilds `box` with a table of `list`, keeping focus on the same row. */
  render(box, caption, list, opts) {
    keepFocus(box, () => clear(box, this.table(caption, list, opts)));
  }
}

export async function render(main, ctx) {
  const f = {
    state: ['open', 'closed', 'all'].includes(ctx.query.state) ? ctx.query.state : 'open',
    severity: ctx.query.severity || '',
    name: ctx.query.name || '',
    device_id: ctx.query.device_id || '',
    // One fleet's conditions (the overview's fleet health links here).
    fleet_id: ctx.query.fleet_id || '',
  };
  const rows = new ConditionRows();
  const stateSel = select([['open', 'Open'], ['closed', 'Closed'], ['all', 'Open and closed']], f.state, { id: 'conditions-state' });
  const sevOptions = [['', 'Any severity'], ['critical,major', 'Critical or major'], ...SEVERITIES.map((s) => [s, s[0].toUpperCase() + s.slice(1)])];
  if (!sevOptions.some(([v]) => v === f.severity)) sevOptions.push([f.severity, f.severity]);
  const sevSel = select(sevOptions, f.severity, { id: 'conditions-severity' });
  const nameIn = h('input', { type: 'search', id: 'conditions-name', value: f.name, placeholder: 'exact name', autocomplete: 'off' });
  // A device's conditions (the device page links here): the device is named, with a way back
  // to every device's.
  const everyDevice = h('a', { id: 'conditions-every-device' }, 'show every device');
  const everyHref = () => everyDevice.setAttribute('href', `#/conditions${api.qs({ ...f, device_id: '' })}`);
  let deviceNote = null;
  if (f.device_id) {
    await rows.loadNames([f.device_id]);
    everyHref();
    deviceNote = h('p', { id: 'conditions-device' }, 'Device ', h('a', { href: `#/devices/${f.device_id}` }, rows.names.get(f.device_id) || f.device_id), ' only · ', everyDevice);
  }
  const fleetName = f.fleet_id ? (await api.get(`/fleets/${f.fleet_id}`).catch(() => null))?.name : null;
  const fleetNote = f.fleet_id ? h('p', { id: 'conditions-fleet' }, 'Fleet ', h('a', { href: `#/fleets/${f.fleet_id}` }, fleetName || f.fleet_id), ' only · ',
    h('a', { href: `#/conditions${api.qs({ ...f, fleet_id: '' })}` }, 'show every fleet')) : null;
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter conditions' },
    field('State', stateSel), field('Severity', sevSel), field('Name', nameIn));
  const box = h('div', { id: 'conditions-table', 'aria-busy': 'true' });
  const count = h('p', { id: 'conditions-count', class: 'muted', 'aria-live': 'polite' });
  const more = h('button', { type: 'button', id: 'conditions-more', hidden: true }, 'Older conditions');
  const live = h('span', { class: 'live-dot', id: 'live-state', title: 'live updates' }, 'connecting…');
  clear(main, h('h1', {}, 'Conditions ', live), form, deviceNote, fleetNote, box, h('div', { class: 'pager' }, more, count));

  let cursor = null;
  let list = [];
  let loadSeq = 0;
  const what = () => ({ open: 'open ', closed: 'closed ', all: '' })[f.state];
  async function load(append, limit = PAGE) {
    const seq = ++loadSeq;
    box.setAttribute('aria-busy', 'true');
    let p;
    try {
      p = await api.get(`/conditions${api.qs({ ...f, limit, cursor: append ? cursor : undefined })}`);
      await rows.loadNames(p.items.map((c) => c.device_id));
    } catch (e) {
      if (seq === loadSeq && ctx.current()) { clear(box, errorBox(e)); more.hidden = true; box.setAttribute('aria-busy', 'false'); }
      return;
    }
    if (seq !== loadSeq || !ctx.current()) return;
    cursor = p.next_cursor;
    list = append ? list.concat(p.items) : p.items;
    const filtered = f.severity || f.name || f.device_id || f.fleet_id;
    rows.render(box, 'Conditions', list, { empty: filtered ? `No ${what()}condition matches.` : `No ${what()}conditions.` });
    box.setAttribute('aria-busy', 'false');
    more.hidden = !cursor;
    count.textContent = `${list.length}${cursor ? '+' : ''} ${what()}condition${list.length === 1 && !cursor ? '' : 's'}`;
  }
  // Reads again what is shown (at least a page), after changes this page cannot place itself.
  const refresh = debounce(() => load(false, Math.min(1000, Math.max(PAGE, list.length))), 300);

  function reload() {
    const next = { state: stateSel.value, severity: sevSel.value, name: nameIn.value.trim() };
    if (next.state === f.state && next.severity === f.severity && next.name === f.name) return;
    Object.assign(f, next);
    history.replaceState(null, '', `#/conditions${api.qs(f)}`);
    everyHref();
    cursor = null;
    load(false);
  }
  form.addEventListener('submit', (ev) => { ev.preventDefault(); reload(); });
  stateSel.addEventListener('change', reload);
  sevSel.addEventListener('change', reload);
  nameIn.addEventListener('change', reload);
  more.addEventListener('click', () => load(true));

  await load(false);

  const sev = () => (f.severity ? f.severity.split(',') : null);
  const matches = (c) => (f.state === 'all' || c.open === (f.state === 'open'))
    && (!sev() || sev().includes(c.severity))
    && (!f.name || c.name === f.name)
    && (!f.device_id || c.device_id === f.device_id)
    && (!f.fleet_id || c.fleet_id === f.fleet_id);
  ctx.cleanup(api.events({ kinds: 'condition' }, (kind, ev) => {
    if (kind === 'lagged') { refresh(); return; }
    if (kind !== 'condition' || !ev || !ev.condition) return;
    const c = ev.condition;
    const device = rows.names.get(c.device_id) || 'a device';
    if (rows.update(c)) {
      // The row stays where it is even when it no longer matches (closed under "open"): the
      // change shows, and the next reload tidies the list. Repeated reports are not announced.
      if (ev.action !== 'updated') announce(`Condition ${c.name} on ${device}: ${ev.action}.`);
      return;
    }
    if (!matches(c)) return;
    if (ev.action === 'opened') announce(`New ${c.severity} condition ${c.name} on ${device}.`);
    refresh();
  }, (up) => {
    live.textContent = up ? 'live' : 'reconnecting…';
    live.classList.toggle('up', up);
  }));
}
