// The audit log: every credential event and administrative change, newest first, filtered by
// kind, device, fleet and time, paged with `next_cursor`.

import * as api from '../api.js';
import { h, clear, field, table, fmtTime, errorBox } from '../dom.js';

const KINDS = ['', 'api_change', 'api_denied', 'login', 'login_failed', 'login_throttled', 'logout', 'auth_failed', 'credential_issued', 'credential_rotated', 'credential_revoked', 'device_created_jit', 'device_provisioned'];

export async function render(main, ctx) {
  const f = {
    kind: ctx.query.kind || '',
    actor: ctx.query.actor || '',
    device_id: ctx.query.device_id || '',
    fleet_id: ctx.query.fleet_id || '',
    since: ctx.query.since || '',
  };
  const kind = h('input', { name: 'kind', id: 'audit-kind', list: 'audit-kinds', value: f.kind, autocomplete: 'off' });
  const kinds = h('datalist', { id: 'audit-kinds' }, KINDS.filter(Boolean).map((k) => h('option', { value: k })));
  const actor = h('input', { name: 'actor', id: 'audit-actor', value: f.actor, autocomplete: 'off', placeholder: 'username or api-key:NAME' });
  const device = h('input', { name: 'device_id', id: 'audit-device', value: f.device_id, autocomplete: 'off', placeholder: 'device id' });
  const fleet = h('input', { name: 'fleet_id', id: 'audit-fleet', value: f.fleet_id, autocomplete: 'off', placeholder: 'fleet id' });
  const since = h('input', { name: 'since', id: 'audit-since', type: 'datetime-local', value: f.since });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the audit log' },
    field('Event kind', kind), kinds, field('Who', actor), field('Device', device), field('Fleet', fleet), field('Since', since),
    h('div', { class: 'field' }, h('span', { class: 'label-spacer', 'aria-hidden': 'true' }, ' '), h('button', { type: 'submit', class: 'primary' }, 'Apply')));
  const box = h('div', { id: 'audit-table' });
  const more = h('button', { type: 'button', id: 'audit-more', hidden: true }, 'Older events');
  clear(main, h('h1', {}, 'Audit log'), form, box, more);

  let cursor = null;
  let rows = [];
  async function load(append) {
    const sinceMs = f.since ? new Date(f.since).getTime() : undefined;
    try {
      const p = await api.get(`/audit${api.qs({ kind: f.kind, actor: f.actor, device_id: f.device_id, fleet_id: f.fleet_id, since: sinceMs, limit: 100, cursor: append ? cursor : undefined })}`);
      cursor = p.next_cursor;
      const fresh = p.items.map((e) => h('tr', {},
        h('td', {}, fmtTime(e.ts)), h('td', {}, e.kind), h('td', {}, e.actor),
        h('td', {}, e.device_id ? h('a', { href: `#/devices/${e.device_id}` }, e.device_id.slice(0, 8)) : '—'),
        h('td', {}, e.peer || '—'), h('td', {}, e.detail)));
      rows = append ? rows.concat(fresh) : fresh;
      clear(box, table('Audit events', ['Time', 'Event', 'Actor', 'Device', 'Address', 'Detail'], rows, { hideCaption: true, empty: 'No events match.' }));
      more.hidden = !cursor;
    } catch (e) {
      clear(box, errorBox(e));
    }
  }
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    Object.assign(f, { kind: kind.value.trim(), actor: actor.value.trim(), device_id: device.value.trim(), fleet_id: fleet.value.trim(), since: since.value });
    history.replaceState(null, '', `#/audit${api.qs(f)}`);
    load(false);
  });
  more.addEventListener('click', () => load(true));
  await load(false);
}
