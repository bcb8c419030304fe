// Integrations (webhooks): state, queue depth, age of the oldest queued message, last error,
// and the dead letters of each, with replay. Degrades to a notice when the server has no
// integrations API.

import * as api from '../api.js';
import { h, clear, table, toast, announce, statusBadge, errorBox, errorText, fmtTime, unavailable } from '../dom.js';

export async function render(main) {
  const body = h('div', { id: 'integrations-body' });
  clear(main, h('h1', {}, 'Integrations'), body);
  let list;
  try {
    list = await api.get('/integrations');
  } catch (e) {
    clear(body, e.status === 404 ? unavailable('Integrations') : errorBox(e));
    return;
  }
  const items = list.items;
  const details = h('div', { id: 'integration-detail' });

  async function showDead(i) {
    clear(details, h('h2', { tabindex: '-1' }, `Dead letters of ${i.name}`), h('p', {}, 'Loading…'));
    details.querySelector('h2').focus();
    try {
      const [status, dead] = await Promise.all([
        api.get(`/integrations/${i.id}/status`).catch(() => null),
        api.get(`/integrations/${i.id}/dead-letters`),
      ]);
      const letters = Array.isArray(dead) ? dead : dead.items || [];
      clear(details, h('h2', { tabindex: '-1' }, `Dead letters of ${i.name}`),
        status ? h('dl', { class: 'facts' }, Object.entries(status).filter(([, v]) => typeof v !== 'object' || v === null).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v === null ? '—' : String(v))])) : null,
        table('Dead letters', ['Failed', 'Reason', 'Idempotency key'], letters.map((d) => h('tr', {},
          h('td', {}, fmtTime(d.dead_at)), h('td', {}, d.reason || '—'), h('td', {}, h('code', {}, d.id)))), { hideCaption: true, empty: 'No dead letters.' }),
        letters.length ? h('button', { type: 'button', class: 'primary', onclick: async () => {
          try {
            await api.post(`/integrations/${i.id}/dead-letters/replay`);
            announce('Dead letters queued again.');
            toast('Dead letters queued again.');
            showDead(i);
          } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Replay all dead letters') : null);
    } catch (e) {
      clear(details, errorBox(e));
    }
  }

  clear(body,
    table('Integrations', ['Name', 'State', 'Queue depth', 'Oldest queued', 'Dead letters', 'Last error', ''], items.map((i) => h('tr', {},
      h('td', {}, i.name),
      h('td', {}, statusBadge(i.status.alarm ? 'alarm' : i.status.state)),
      h('td', {}, String(i.status.queue_depth)),
      h('td', {}, i.status.oldest_age_ms ? `${Math.round(i.status.oldest_age_ms / 1000)} s` : '—'),
      h('td', {}, String(i.status.dead_letters)),
      h('td', {}, i.status.last_error || '—'),
      h('td', {}, h('button', { type: 'button', class: 'small', onclick: () => showDead(i) }, 'Dead letters')))),
    { hideCaption: true, empty: 'No integrations yet. Create them with the CLI or the API.' }),
    details);
}
