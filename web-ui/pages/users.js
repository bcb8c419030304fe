// Users and API keys: list, create, enable/disable, make admin, delete users; per user, list,
// create (the secret is shown once) and delete API keys. Degrades to a notice when the server
// has no user accounts. Also the server's backup download (this page is the administrators').

import * as api from '../api.js';
import { h, clear, field, table, onSubmit, toast, announce, fmtTime, errorBox, errorText, unavailable, secretBox } from '../dom.js';

function grantsText(u) {
  if (u.admin) return 'administrator (everything)';
  const g = u.grants || [];
  if (!g.length) return 'no access';
  return g.map((x) => `${x.role} in ${x.workspace_name || x.workspace_id.slice(0, 8)}${x.fleets ? ` (${x.fleets.length} fleets)` : ''}`).join('; ');
}

export async function render(main, ctx) {
  const body = h('div', { id: 'users-body' });
  clear(main, h('h1', {}, 'Users & API keys'), body);
  let list;
  try {
    list = await api.get('/users');
  } catch (e) {
    clear(body, e.status === 404 ? unavailable('User accounts') : errorBox(e));
    return;
  }
  const users = Array.isArray(list) ? list : list.items || [];
  let workspaces = [];
  try { workspaces = (await api.get('/workspaces?limit=1000')).items; } catch { /* grants by id only */ }
  const keysBox = h('div', { id: 'user-keys' });

  async function showKeys(u) {
    const secret = h('div');
    const render = async () => {
      let keys;
      try { keys = await api.get(`/users/${u.id}/api-keys`); } catch (e) { clear(keysBox, errorBox(e)); return; }
      keys = Array.isArray(keys) ? keys : keys.items || [];
      const form = onSubmit(h('form', { class: 'inline-form', 'aria-label': `New API key for ${u.username}` },
        field('Key name', h('input', { name: 'name', required: true, id: 'api-key-name', autocomplete: 'off' })),
        h('button', { type: 'submit', class: 'primary' }, 'Create API key')), async (d) => {
        const k = await api.post(`/users/${u.id}/api-keys`, { name: d.get('name') });
        clear(secret, secretBox(`API key ${k.name}`, k.secret));
        announce('API key created; copy it now.');
        render();
      });
      clear(keysBox, h('h2', { tabindex: '-1', id: 'keys-h' }, `API keys of ${u.username}`),
        table('API keys', ['Name', 'Created', ''], keys.map((k) => h('tr', {},
          h('td', {}, k.name), h('td', {}, fmtTime(k.created_at)),
          h('td', {}, h('button', { type: 'button', class: 'small danger', onclick: async () => {
            if (!window.confirm(`Delete API key ${k.name}? Programs using it stop working.`)) return;
            try { await api.del(`/users/${u.id}/api-keys/${k.id}`); announce('API key deleted.'); render(); } catch (e) { toast(errorText(e), 'error'); }
          } }, 'Delete')))), { hideCaption: true, empty: 'No API keys.' }),
        form, secret);
    };
    await render();
    keysBox.querySelector('h2')?.focus();
  }

  const patchUser = (u, p, what) => async () => {
    try { await api.patch(`/users/${u.id}`, p); announce(`${u.username}: ${what}.`); ctx.go('/users'); } catch (e) { toast(errorText(e), 'error'); }
  };

  const roleSel = h('select', { name: 'role' }, ['viewer', 'operator', 'admin'].map((r) => h('option', { value: r }, r)));
  const wsSel = h('select', { name: 'workspace_id' }, h('option', { value: '' }, '(none)'), workspaces.map((w) => h('option', { value: w.id }, w.name)));
  const form = onSubmit(h('form', { class: 'inline-form', id: 'user-form', 'aria-labelledby': 'user-new' },
    h('h2', { id: 'user-new' }, 'New user'),
    field('Username', h('input', { name: 'username', required: true, autocomplete: 'off' })),
    field('Display name', h('input', { name: 'display_name' })),
    field('Password', h('input', { name: 'password', type: 'password', required: true, minlength: '10', autocomplete: 'new-password' })),
    h('div', { class: 'field check' }, h('input', { type: 'checkbox', name: 'admin', id: 'user-admin' }), h('label', { for: 'user-admin' }, 'Administrator (all workspaces, users and settings)')),
    field('Workspace', wsSel), field('Role there', roleSel),
    h('button', { type: 'submit', class: 'primary' }, 'Create user')), async (d) => {
    const grants = d.get('workspace_id') ? [{ workspace_id: d.get('workspace_id'), role: d.get('role'), fleets: null }] : [];
    const u = await api.post('/users', { username: d.get('username'), display_name: d.get('display_name') || d.get('username'), password: d.get('password'), admin: d.get('admin') === 'on', grants });
    announce(`User ${u.username || d.get('username')} created.`);
    ctx.go('/users');
  });

  const wsName = Object.fromEntries(workspaces.map((w) => [w.id, w.name]));
  for (const u of users) for (const g of u.grants || []) g.workspace_name = wsName[g.workspace_id];
  clear(body,
    table('Users', ['Username', 'Name', 'Access', 'Enabled', 'Last sign-in', ''], users.map((u) => h('tr', {},
      h('th', { scope: 'row' }, u.username),
      h('td', {}, u.display_name || '—'),
      h('td', {}, grantsText(u)),
      h('td', {}, u.enabled === false ? 'no' : 'yes'),
      h('td', {}, fmtTime(u.last_login_at)),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small', onclick: () => showKeys(u) }, 'API keys'),
        h('button', { type: 'button', class: 'small', onclick: patchUser(u, { enabled: u.enabled === false }, u.enabled === false ? 'enabled' : 'disabled') }, u.enabled === false ? 'Enable' : 'Disable'),
        h('button', { type: 'button', class: 'small danger', onclick: async () => {
          if (!window.confirm(`Delete user ${u.username}?`)) return;
          try { await api.del(`/users/${u.id}`); announce('User deleted.'); ctx.go('/users'); } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Delete')))), { hideCaption: true, empty: 'No users.' }),
    keysBox, form,
    h('section', { 'aria-labelledby': 'backup-h' },
      h('h2', { id: 'backup-h' }, 'Backup'),
      h('p', {}, 'One file with the whole server as it is now: devices, data, users, keys and the CA. Devices keep publishing while it is written. Check it with ',
        h('code', {}, 'corral backup verify FILE'), ' and restore it with ', h('code', {}, 'corral restore FILE DIR'), '.'),
      h('button', { type: 'button', id: 'backup-download', onclick: async () => {
        try { await api.downloadBackup(); announce('Backup download started.'); } catch (e) { toast(errorText(e), 'error'); }
      } }, 'Download a backup')));
}
