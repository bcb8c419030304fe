// Sign in: with a username and password (session cookie), or — the documented fallback for
// automation and for servers without user accounts — with an admin API key kept in this tab.
// `#/setup?token=...` creates the first administrator from the one-time setup link.

import * as api from '../api.js';
import { h, clear, field, errorText } from '../dom.js';

export function render(main, ctx) {
  const status = h('p', { class: 'form-error', role: 'alert', id: 'login-error' });
  const fail = (e) => { status.textContent = errorText(e); };

  if (ctx.setup) {
    const token = ctx.query.token || '';
    const form = h('form', { class: 'card narrow', 'aria-labelledby': 'setup-title' },
      h('h1', { id: 'setup-title' }, 'Create the first administrator'),
      h('p', {}, 'This one-time link sets up the first account of this Corral: a server administrator. Passwords have at least 10 characters.'),
      field('Setup token', h('input', { name: 'token', required: true, value: token, autocomplete: 'off' })),
      field('Username', h('input', { name: 'username', required: true, autocomplete: 'username' })),
      field('Password', h('input', { name: 'password', type: 'password', required: true, minlength: '10', autocomplete: 'new-password' })),
      status,
      h('button', { type: 'submit', class: 'primary' }, 'Create and sign in'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const d = new FormData(form);
      try {
        await api.setup(d.get('token'), d.get('username'), d.get('password'));
        ctx.done();
      } catch (e) {
        fail(e.missing ? new Error('Account setup is not available on this server: sign in with an API key.') : e);
      }
    });
    clear(main, h('div', { class: 'login' }, form));
    form.querySelector('input:not([value=""])') ? form.querySelector('[name=username]').focus() : form.querySelector('input').focus();
    return;
  }

  const pw = h('form', { class: 'card narrow', 'aria-labelledby': 'login-title', id: 'login-form' },
    h('h1', { id: 'login-title' }, 'Sign in to Corral'),
    field('Username', h('input', { name: 'username', required: true, autocomplete: 'username', id: 'login-username' })),
    field('Password', h('input', { name: 'password', type: 'password', required: true, autocomplete: 'current-password', id: 'login-password' })),
    status,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  pw.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const d = new FormData(pw);
    status.textContent = '';
    try {
      await api.login(d.get('username'), d.get('password'));
      ctx.done();
    } catch (e) {
      if (e.missing) fail(new Error('Password sign-in is not available on this server: sign in with an API key below.'));
      else if (e.code === 'invalid_login' || e.status === 401) fail(new Error('Wrong username or password.'));
      else if (e.code === 'too_many_attempts' || e.status === 429) fail(new Error('Too many attempts: wait a minute and try again.'));
      else fail(e);
    }
  });

  const keyStatus = h('p', { class: 'form-error', role: 'alert', id: 'key-error' });
  const key = h('form', { class: 'card narrow', 'aria-labelledby': 'key-title', id: 'key-form' },
    h('h2', { id: 'key-title' }, 'Sign in with an API key'),
    h('p', { class: 'muted' }, 'An admin API key (as printed at first start, or created under Users & keys). It is kept in this browser tab only.'),
    field('API key', h('input', { name: 'key', type: 'password', required: true, autocomplete: 'off', id: 'api-key', spellcheck: 'false' })),
    keyStatus,
    h('button', { type: 'submit' }, 'Sign in with key'));
  key.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    keyStatus.textContent = '';
    try {
      await api.useApiKey(new FormData(key).get('key'));
      ctx.done();
    } catch (e) {
      keyStatus.textContent = e.status === 401 ? 'That key is not valid.' : errorText(e);
    }
  });

  const page = h('div', { class: 'login' }, pw, key);
  clear(main, page);
  pw.querySelector('input').focus();
  // A fresh server has no user yet: say how the first one is made instead of a bare form.
  api.authStatus().then((st) => {
    if (!st || st.users_exist) return;
    page.prepend(h('section', { class: 'card narrow notice', id: 'no-user-yet', role: 'status' },
      h('h2', {}, 'No user exists yet'),
      h('p', {}, 'Open the one-time setup link the server printed when it started (in its terminal, ',
        h('code', {}, 'docker logs corral'), ' or ', h('code', {}, 'journalctl -u corral'),
        '). It creates the first administrator. The link is valid for a limited time; a restart prints a new one.'),
      h('p', {}, 'Or create one from the command line with the admin API key: ',
        h('code', {}, 'corral user create NAME --admin'), '.')));
  }).catch(() => { /* an older server: nothing to add */ });
}
