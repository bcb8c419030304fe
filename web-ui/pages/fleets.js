// Workspaces and fleets: list and create both; a fleet links to its devices, its jobs and its
// settings page (fleet.js). Creating and deleting workspaces is for server admins, creating and
// deleting fleets for the workspace's admins: other callers see a note instead (roles.js).

import * as api from '../api.js';
import { h, clear, field, table, onSubmit, toast, fmtTime, announce } from '../dom.js';
import { canOnWorkspace, serverAdmin, roleNote } from '../roles.js';

async function all(path) {
  const items = [];
  let cursor;
  for (let i = 0; i < 20; i++) {
    const p = await api.get(`${path}${path.includes('?') ? '&' : '?'}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...p.items);
    if (!p.next_cursor) break;
    cursor = p.next_cursor;
  }
  return items;
}

export const allWorkspaces = () => all('/workspaces');
export const allFleets = () => all('/fleets');

export async function render(main, ctx) {
  const [workspaces, fleets] = await Promise.all([allWorkspaces(), allFleets()]);
  const wsName = Object.fromEntries(workspaces.map((w) => [w.id, w.name]));
  const admin = serverAdmin();
  // Workspaces where the caller may create and delete fleets.
  const fleetAdmin = workspaces.filter((w) => canOnWorkspace(w.id, 'admin'));

  const wsForm = onSubmit(h('form', { class: 'inline-form', id: 'workspace-form', 'aria-labelledby': 'ws-new' },
    h('h3', { id: 'ws-new' }, 'New workspace'),
    field('Name', h('input', { name: 'name', required: true, id: 'workspace-name' })),
    field('Description', h('input', { name: 'description' })),
    h('button', { type: 'submit', class: 'primary' }, 'Create workspace')), async (d) => {
    const w = await api.post('/workspaces', { name: d.get('name'), description: d.get('description') });
    toast(`Workspace ${w.name} created.`);
    announce(`Workspace ${w.name} created.`);
    ctx.go('/fleets');
  });

  const fleetForm = onSubmit(h('form', { class: 'inline-form', id: 'fleet-form', 'aria-labelledby': 'fleet-new' },
    h('h3', { id: 'fleet-new' }, 'New fleet'),
    field('Workspace', h('select', { name: 'workspace_id', required: true, id: 'fleet-workspace' },
      fleetAdmin.map((w) => h('option', { value: w.id }, w.name)))),
    field('Name', h('input', { name: 'name', required: true, id: 'fleet-name' })),
    field('Description', h('input', { name: 'description' })),
    h('button', { type: 'submit', class: 'primary', disabled: fleetAdmin.length === 0 }, 'Create fleet')), async (d) => {
    const f = await api.post('/fleets', { workspace_id: d.get('workspace_id'), name: d.get('name'), description: d.get('description') });
    toast(`Fleet ${f.name} created.`);
    announce(`Fleet ${f.name} created.`);
    ctx.go('/fleets');
  });

  const del = (path, what) => async () => {
    if (!window.confirm(`Delete ${what}?`)) return;
    try {
      await api.del(path);
      toast(`${what} deleted.`);
      ctx.go('/fleets');
    } catch (e) {
      toast(e.code === 'not_empty' ? `${what} is not empty.` : e.message, 'error');
    }
  };

  clear(main,
    h('h1', {}, 'Workspaces & fleets'),
    h('section', { 'aria-labelledby': 'ws-title' },
      h('h2', { id: 'ws-title' }, 'Workspaces'),
      table('Workspaces', ['Name', 'Description', 'Fleets', 'Created', ''], workspaces.map((w) => h('tr', {},
        h('td', {}, w.name),
        h('td', {}, w.description || '—'),
        h('td', {}, String(fleets.filter((f) => f.workspace_id === w.id).length)),
        h('td', {}, fmtTime(w.created_at)),
        h('td', {}, admin ? h('button', { type: 'button', class: 'small', 'aria-label': `Delete workspace ${w.name}`, onclick: del(`/workspaces/${w.id}`, `Workspace ${w.name}`) }, 'Delete') : null))),
      { hideCaption: true, empty: admin ? 'No workspaces yet: create one below.' : 'No workspaces.' }),
      admin ? wsForm : roleNote('admin', 'Creating and deleting workspaces', 'server')),
    h('section', { 'aria-labelledby': 'fleets-title' },
      h('h2', { id: 'fleets-title' }, 'Fleets'),
      table('Fleets', ['Name', 'Workspace', 'Description', 'Created', ''], fleets.map((f) => h('tr', {},
        h('td', {}, h('a', { href: `#/devices?fleet_id=${f.id}` }, f.name)),
        h('td', {}, wsName[f.workspace_id] || f.workspace_id),
        h('td', {}, f.description || '—'),
        h('td', {}, fmtTime(f.created_at)),
        h('td', { class: 'actions' },
          h('a', { href: `#/fleets/${f.id}`, class: 'button small', 'data-fleet-settings': f.name, 'aria-label': `Settings of fleet ${f.name}` }, 'Settings'),
          h('a', { href: `#/jobs?fleet_id=${f.id}`, class: 'button small', 'aria-label': `Jobs of fleet ${f.name}` }, 'Jobs'),
          canOnWorkspace(f.workspace_id, 'admin') ? h('button', { type: 'button', class: 'small', 'aria-label': `Delete fleet ${f.name}`, onclick: del(`/fleets/${f.id}`, `Fleet ${f.name}`) }, 'Delete') : null))),
      { hideCaption: true, empty: 'No fleets yet.' }),
      !workspaces.length ? h('p', { class: 'muted' }, admin ? 'Create a workspace first.' : 'No workspace yet.')
        : fleetAdmin.length ? fleetForm : roleNote('admin', 'Creating and deleting fleets', 'workspace')));
}
