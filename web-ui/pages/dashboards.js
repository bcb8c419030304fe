// Dashboards: those the caller sees (a workspace's, or a fleet's), each with its scope and
// widget count, and a form to create one (operators and admins of its fleet or workspace)
// that opens it in edit mode.

import * as api from '../api.js';
import { h, clear, field, table, onSubmit, toast, announce, fmtTime } from '../dom.js';
import { canOnFleet, canOnWorkspace, roleNote } from '../roles.js';
import { allWorkspaces, allFleets } from './fleets.js';

export const WINDOWS = [[15, 'Last 15 minutes'], [60, 'Last hour'], [360, 'Last 6 hours'], [1440, 'Last 24 hours'], [10080, 'Last 7 days'], [43200, 'Last 30 days']];

export async function render(main, ctx) {
  const [list, workspaces, fleets] = await Promise.all([api.get('/dashboards'), allWorkspaces(), allFleets()]);
  const wsName = Object.fromEntries(workspaces.map((w) => [w.id, w.name]));
  const fleetName = Object.fromEntries(fleets.map((f) => [f.id, f.name]));
  // Where the caller may create one: each fleet they operate, and each workspace as a whole.
  const scopes = [
    ...workspaces.filter((w) => canOnWorkspace(w.id, 'operator')).map((w) => [`w:${w.id}`, `${w.name} (whole workspace)`]),
    ...fleets.filter((f) => canOnFleet(f.workspace_id, f.id, 'operator')).map((f) => [`f:${f.id}`, `${wsName[f.workspace_id] || '?'} / ${f.name}`]),
  ];
  const form = scopes.length ? onSubmit(h('form', { class: 'inline-form', id: 'dashboard-form', 'aria-labelledby': 'dashboard-new' },
    h('h2', { id: 'dashboard-new' }, 'New dashboard'),
    field('Name', h('input', { name: 'name', required: true, maxlength: '100', id: 'dashboard-name' })),
    field('For', h('select', { name: 'scope', id: 'dashboard-scope', required: true }, scopes.map(([v, l]) => h('option', { value: v }, l)))),
    field('Time window', h('select', { name: 'window', id: 'dashboard-window' }, WINDOWS.map(([v, l]) => h('option', { value: String(v), selected: v === 60 }, l)))),
    h('button', { type: 'submit', class: 'primary' }, 'Create dashboard')), async (d) => {
    const [kind, id] = String(d.get('scope')).split(':');
    const fleet = kind === 'f' ? fleets.find((f) => f.id === id) : null;
    const body = {
      workspace_id: fleet ? fleet.workspace_id : id,
      fleet_id: fleet ? fleet.id : undefined,
      name: d.get('name'),
      window: { last_mins: Number(d.get('window')) },
    };
    const created = await api.post('/dashboards', body);
    toast(`Dashboard ${created.name} created.`);
    announce(`Dashboard ${created.name} created. Add its widgets.`);
    ctx.go(`/dashboards/${created.id}`, { edit: '1' });
  }) : roleNote('operator', 'Creating dashboards');

  clear(main, h('h1', {}, 'Dashboards'),
    table('Dashboards', ['Name', 'Workspace', 'Fleet', 'Widgets', 'Changed'], list.items.map((d) => h('tr', {},
      h('th', { scope: 'row' }, h('a', { href: `#/dashboards/${d.id}` }, d.name)),
      h('td', {}, wsName[d.workspace_id] || d.workspace_id),
      h('td', {}, d.fleet_id ? fleetName[d.fleet_id] || d.fleet_id : 'all fleets'),
      h('td', { class: 'num' }, String(d.widgets.length)),
      h('td', {}, fmtTime(d.updated_at)))), { hideCaption: true, empty: 'No dashboards yet.' }),
    form);
}
