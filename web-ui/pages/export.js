// Data export: the telemetry of a fleet, or of some of its devices, between two times, of
// chosen keys and tags, downloaded as CSV or JSON from `GET /api/v1/export` (streamed by the
// server, saved by the browser). The choices stay in the page address.

import * as api from '../api.js';
import { h, clear, field, toast, announce, errorText } from '../dom.js';
import { allWorkspaces, allFleets } from './fleets.js';

/** A datetime-local value for `ms`, in local time. */
function localInput(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

export async function render(main, ctx) {
  const [workspaces, fleets] = await Promise.all([allWorkspaces(), allFleets()]);
  const wsName = Object.fromEntries(workspaces.map((w) => [w.id, w.name]));
  const q = ctx.query;
  const fleet = h('select', { id: 'export-fleet', required: true },
    fleets.map((f) => h('option', { value: f.id, selected: q.fleet_id === f.id }, `${wsName[f.workspace_id] || '?'} / ${f.name}`)));
  const devices = h('select', { id: 'export-devices', multiple: true, size: '6' });
  const count = h('small', { id: 'export-devices-count', 'aria-live': 'polite' });
  async function fillDevices() {
    if (!fleet.value) return;
    const r = await api.get(`/devices${api.qs({ fleet_id: fleet.value, limit: 1000, sort: 'name' })}`);
    const chosen = new Set((q.device_id || '').split(',').filter(Boolean));
    clear(devices, r.items.map((d) => h('option', { value: d.id, selected: chosen.has(d.id) }, d.name)));
    count.textContent = `${r.total ?? r.items.length} devices in the fleet; none chosen exports them all.`;
  }
  fleet.addEventListener('change', () => { q.device_id = ''; fillDevices().catch((e) => toast(errorText(e), 'error')); });
  const now = Date.now();
  const from = h('input', { id: 'export-from', type: 'datetime-local', value: q.from ? localInput(Number(q.from)) : localInput(now - 86400000), required: true });
  const to = h('input', { id: 'export-to', type: 'datetime-local', value: q.to ? localInput(Number(q.to)) : localInput(now + 60000), required: true });
  const keys = h('input', { id: 'export-keys', value: q.keys || '', placeholder: 'all keys' });
  const tags = h('input', { id: 'export-tags', value: q.tags || '', placeholder: 'all tags' });
  const format = h('fieldset', { id: 'export-format' }, h('legend', {}, 'Format'),
    [['csv', 'CSV'], ['json', 'JSON']].map(([v, l]) => h('label', { class: 'day' },
      h('input', { type: 'radio', name: 'format', value: v, checked: (q.format || 'csv') === v }), ` ${l}`)));
  const err = h('div', { class: 'form-error', id: 'export-error', role: 'alert' });
  const form = h('form', { class: 'inline-form', id: 'export-form', 'aria-label': 'Export data' },
    field('Fleet', fleet), field('Devices', devices), count,
    field('From', from), field('To', to),
    field('Keys', keys, 'Comma-separated'), field('Tags', tags, 'Comma-separated'),
    format, err,
    h('button', { type: 'submit', class: 'primary' }, 'Download'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    const chosen = [...devices.selectedOptions].map((o) => o.value);
    const fmt = form.querySelector('input[name=format]:checked').value;
    const params = {
      fleet_id: chosen.length ? undefined : fleet.value,
      device_id: chosen.length ? chosen.join(',') : undefined,
      from: new Date(from.value).getTime(),
      to: new Date(to.value).getTime(),
      keys: keys.value.split(',').map((k) => k.trim()).filter(Boolean).join(','),
      tags: tags.value.split(',').map((k) => k.trim()).filter(Boolean).join(','),
      format: fmt,
    };
    // A session's download goes straight to disk, where an error answer would land as a file:
    // what the server would refuse is said here instead.
    if (!(params.from < params.to)) { err.textContent = 'The start must be before the end.'; return; }
    history.replaceState(null, '', `#/export${api.qs({ ...params, fleet_id: fleet.value })}`);
    try {
      await api.downloadFile(`/export${api.qs(params)}`, `corral-export.${fmt}`);
      announce('The export is downloading.');
    } catch (e) {
      err.textContent = errorText(e);
    }
  });
  clear(main, h('h1', {}, 'Export data'),
    h('p', {}, 'Telemetry of a fleet or of some of its devices, as CSV (one row per point) or JSON.'),
    fleets.length ? form : h('p', { class: 'muted' }, 'No fleets to export from.'));
  await fillDevices();
}
