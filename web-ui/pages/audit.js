// The audit log: every credential event and administrative change, newest first, filtered by
// kind (picked from every kind the server records), who, fleet (by name), device and time,
// paged with `next_cursor`; devices and fleets shown by name (a deleted one by its short id).

import * as api from '../api.js';
import { h, clear, field, table, fmtTime, errorBox } from '../dom.js';
import { allFleets, allWorkspaces } from './fleets.js';

// Every kind of `AuditKind` (src/model), grouped as people look for them.
const KINDS = [
  ['Changes', [['api_change', 'Change through the API'], ['api_denied', 'Refused for the role'], ['api_auth_failed', 'API sign-in failed']]],
  ['Sign-in', [['login', 'Signed in'], ['login_failed', 'Sign-in failed'], ['login_throttled', 'Sign-in throttled'], ['logout', 'Signed out'], ['setup_failed', 'Setup link refused']]],
  ['Users and keys', [['user_created', 'User created'], ['user_updated', 'User changed'], ['user_deleted', 'User deleted'], ['api_key_created', 'API key created'], ['api_key_deleted', 'API key deleted']]],
  ['Devices', [['auth_failed', 'Device refused at connect'], ['device_provisioned', 'Device provisioned'], ['device_created_jit', 'Device joined by a CA'], ['device_enabled', 'Device enabled'], ['device_disabled', 'Device disabled'], ['device_deleted', 'Device deleted'], ['claim_requested', 'Claim requested'], ['sub_device_created', 'Sub-device created by a gateway'], ['provision_failed', 'Provisioning failed']]],
  ['Credentials', [['credential_issued', 'Credential issued'], ['credential_rotated', 'Credential rotated'], ['credential_revoked', 'Credential revoked'], ['credential_deleted', 'Credential deleted']]],
  ['Fleet trust', [['provisioning_key_set', 'Provisioning key set'], ['provisioning_key_removed', 'Provisioning key removed'], ['manufacturer_ca_added', 'Manufacturer CA added'], ['manufacturer_ca_removed', 'Manufacturer CA removed']]],
  ['Packages', [['package_uploaded', 'Package uploaded'], ['package_deleted', 'Package deleted'], ['package_assigned', 'Package assigned'], ['package_unassigned', 'Package unassigned'], ['package_manifest_set', 'Manifest replaced']]],
  ['Campaigns', [['campaign_created', 'Campaign created'], ['campaign_approved', 'Campaign approved'], ['campaign_started', 'Campaign started'], ['campaign_paused', 'Campaign paused'], ['campaign_resumed', 'Campaign resumed'], ['campaign_cancelled', 'Campaign cancelled'], ['campaign_install', 'Install sent'], ['campaigns_stopped', 'Emergency stop']]],
];
const KIND_LABEL = Object.fromEntries(KINDS.flatMap(([, ks]) => ks));

export async function render(main, ctx) {
  const f = {
    kind: ctx.query.kind || '',
    actor: ctx.query.actor || '',
    device_id: ctx.query.device_id || '',
    fleet_id: ctx.query.fleet_id || '',
    since: ctx.query.since || '',
  };
  const [fleets, workspaces] = await Promise.all([allFleets().catch(() => []), allWorkspaces().catch(() => [])]);
  const wsName = Object.fromEntries(workspaces.map((w) => [w.id, w.name]));
  const fleetName = Object.fromEntries(fleets.map((x) => [x.id, x.name]));
  const kind = h('select', { name: 'kind', id: 'audit-kind' }, h('option', { value: '' }, 'Every kind'),
    KINDS.map(([group, ks]) => h('optgroup', { label: group }, ks.map(([k, l]) => h('option', { value: k, selected: k === f.kind }, l)))));
  const actor = h('input', { name: 'actor', id: 'audit-actor', value: f.actor, autocomplete: 'off', placeholder: 'username or api-key:NAME' });
  const fleet = h('select', { name: 'fleet_id', id: 'audit-fleet' }, h('option', { value: '' }, 'Every fleet'),
    fleets.map((x) => h('option', { value: x.id, selected: x.id === f.fleet_id }, `${wsName[x.workspace_id] || '?'} / ${x.name}`)));
  const device = h('input', { name: 'device_id', id: 'audit-device', value: f.device_id, autocomplete: 'off', placeholder: 'device id' });
  const since = h('input', { name: 'since', id: 'audit-since', type: 'datetime-local', value: f.since });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the audit log' },
    field('Event kind', kind), field('Who', actor), field('Fleet', fleet), field('Device', device), field('Since', since),
    h('div', { class: 'field' }, h('span', { class: 'label-spacer', 'aria-hidden': 'true' }, ' '), h('button', { type: 'submit', class: 'primary' }, 'Apply')));
  const box = h('div', { id: 'audit-table' });
  const more = h('button', { type: 'button', id: 'audit-more', hidden: true }, 'Older events');
  clear(main, h('h1', {}, 'Audit log'), form, box, more);

  // Device names, read once per device (a deleted device keeps its short id).
  const deviceNames = new Map();
  async function names(ids) {
    const missing = [...new Set(ids)].filter((id) => id && !deviceNames.has(id));
    await Promise.all(missing.map(async (id) => {
      try { deviceNames.set(id, (await api.get(`/devices/${id}`)).name); } catch { deviceNames.set(id, null); }
    }));
  }

  let cursor = null;
  let rows = [];
  async function load(append) {
    const sinceMs = f.since ? new Date(f.since).getTime() : undefined;
    try {
      const p = await api.get(`/audit${api.qs({ kind: f.kind, actor: f.actor, device_id: f.device_id, fleet_id: f.fleet_id, since: sinceMs, limit: 100, cursor: append ? cursor : undefined })}`);
      cursor = p.next_cursor;
      await names(p.items.map((e) => e.device_id));
      const fresh = p.items.map((e) => h('tr', { 'data-kind': e.kind },
        h('td', {}, fmtTime(e.ts)), h('td', { title: e.kind }, KIND_LABEL[e.kind] || e.kind), h('td', {}, e.actor),
        h('td', {}, e.device_id ? h('a', { href: `#/devices/${e.device_id}` }, deviceNames.get(e.device_id) || e.device_id.slice(0, 8)) : '—'),
        h('td', {}, e.fleet_id ? h('a', { href: `#/fleets/${e.fleet_id}` }, fleetName[e.fleet_id] || e.fleet_id.slice(0, 8)) : '—'),
        h('td', {}, e.peer || '—'), h('td', {}, e.detail)));
      rows = append ? rows.concat(fresh) : fresh;
      clear(box, table('Audit events', ['Time', 'Event', 'Actor', 'Device', 'Fleet', 'Address', 'Detail'], rows, { hideCaption: true, empty: 'No events match.' }));
      more.hidden = !cursor;
    } catch (e) {
      clear(box, errorBox(e));
    }
  }
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    Object.assign(f, { kind: kind.value, actor: actor.value.trim(), device_id: device.value.trim(), fleet_id: fleet.value, since: since.value });
    history.replaceState(null, '', `#/audit${api.qs(f)}`);
    load(false);
  });
  more.addEventListener('click', () => load(true));
  await load(false);
}
