// Integrations (webhooks), for server admins: each with its state, queue depth, age of the
// oldest queued message and last error; create and edit them (filters by workspace, fleets,
// kinds and tags, an auth header, delivery settings), pause, resume, send a test event,
// delete (confirmed); and each one's status and dead letters, with readable times, replay and
// deletion. Degrades to a notice when the server has no integrations API.

import * as api from '../api.js';
import { h, clear, table, toast, announce, statusBadge, errorBox, errorText, fmtTime, fmtAgo, unavailable, field, secretBox } from '../dom.js';
import { allWorkspaces, allFleets } from './fleets.js';

const KINDS = [['data', 'Telemetry'], ['attributes', 'Attributes'], ['conditions', 'Conditions'], ['connectivity', 'Connections'], ['job_results', 'Job results'], ['ota', 'OTA updates']];

/** A status field for people: times as dates, ages and delays in seconds. */
function statusValue(k, v) {
  if (v === null || v === undefined) return '—';
  if (k.endsWith('_at')) return `${fmtTime(v)} (${fmtAgo(v)})`;
  if (k.endsWith('_ms')) return `${(v / 1000).toFixed(v < 10000 ? 1 : 0)} s`;
  if (typeof v === 'number' && !Number.isInteger(v)) return v.toFixed(2);
  return String(v);
}

const STATUS_LABELS = {
  state: 'State', queue_depth: 'Queued entries', queue_bytes: 'Queued bytes', oldest_age_ms: 'Oldest queued for',
  delivered_total: 'Delivered', delivered_per_sec: 'Delivered per second', failed_attempts: 'Failed attempts',
  dropped_total: 'Dropped by the caps', dead_letters: 'Dead letters', last_error: 'Last error', last_error_at: 'Last error at',
  last_delivery_at: 'Last delivery', next_attempt_at: 'Next attempt', alarm: 'Alarm', alarm_since: 'Alarm since',
};

export async function render(main, ctx) {
  const body = h('div', { id: 'integrations-body' });
  clear(main, h('h1', {}, 'Integrations'), body);
  let list;
  try {
    list = await api.get('/integrations');
  } catch (e) {
    clear(body, e.status === 404 ? unavailable('Integrations') : errorBox(e));
    return;
  }
  const [workspaces, fleets] = await Promise.all([allWorkspaces(), allFleets()]);
  const items = list.items;
  const details = h('div', { id: 'integration-detail' });
  const formBox = h('div', { id: 'integration-editor' });
  const reload = () => ctx.go('/integrations');

  async function act(what, f) {
    try {
      await f();
      toast(what);
      announce(what);
      reload();
    } catch (e) { toast(errorText(e), 'error'); }
  }

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
        status ? h('dl', { class: 'facts', id: 'integration-status' }, Object.entries(status).filter(([, v]) => typeof v !== 'object' || v === null)
          .map(([k, v]) => [h('dt', {}, STATUS_LABELS[k] || k), h('dd', { 'data-field': k }, statusValue(k, v))])) : null,
        table('Dead letters', ['Queued', 'Failed', 'Reason', 'Idempotency key'], letters.map((d) => h('tr', {},
          h('td', {}, fmtTime(d.queued_at)), h('td', {}, fmtTime(d.dead_at)), h('td', {}, d.reason || '—'), h('td', {}, h('code', {}, d.id)))), { hideCaption: true, empty: 'No dead letters.' }),
        letters.length ? h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'primary', onclick: async () => {
            try {
              await api.post(`/integrations/${i.id}/dead-letters/replay`);
              announce('Dead letters queued again.');
              toast('Dead letters queued again.');
              showDead(i);
            } catch (e) { toast(errorText(e), 'error'); }
          } }, 'Replay all dead letters'),
          h('button', { type: 'button', class: 'danger', onclick: async () => {
            try {
              const r = await api.del(`/integrations/${i.id}/dead-letters`);
              toast(`${r ? r.count : 'The'} dead letters deleted.`);
              showDead(i);
            } catch (e) { toast(errorText(e), 'error'); }
          } }, 'Delete all dead letters')) : null);
    } catch (e) {
      clear(details, errorBox(e));
    }
  }

  /** The create or edit form; `i` is the integration edited, or null for a new one. */
  function showForm(i) {
    const err = h('div', { class: 'form-error', id: 'integration-error', role: 'alert' });
    const name = h('input', { id: 'integration-name', value: i ? i.name : '', required: true, maxlength: '128' });
    const url = h('input', { id: 'integration-url', type: 'url', value: i ? i.url : '', required: true, placeholder: 'https://erp.example.lan/hook' });
    const ws = h('select', { id: 'integration-workspace' }, h('option', { value: '' }, 'Every workspace'),
      workspaces.map((w) => h('option', { value: w.id, selected: i && i.workspace_id === w.id }, w.name)));
    const fleetSel = h('select', { id: 'integration-fleets', multiple: true, size: '4' });
    const fillFleets = () => {
      const chosen = new Set(i ? i.fleet_ids : []);
      clear(fleetSel, fleets.filter((f) => !ws.value || f.workspace_id === ws.value)
        .map((f) => h('option', { value: f.id, selected: chosen.has(f.id) }, f.name)));
    };
    ws.addEventListener('change', fillFleets);
    fillFleets();
    const kinds = h('fieldset', { id: 'integration-kinds' }, h('legend', {}, 'Events (none ticked: all)'),
      KINDS.map(([k, l]) => h('label', { class: 'day' }, h('input', { type: 'checkbox', value: k, checked: i && i.kinds.includes(k) }), ` ${l}`)));
    const tags = h('input', { id: 'integration-tags', value: i ? i.tags.join(', ') : '', placeholder: 'all tags' });
    const authName = h('input', { id: 'integration-auth-name', value: i?.auth_header_name || '', placeholder: 'Authorization' });
    const authValue = h('input', { id: 'integration-auth-value', type: 'password', autocomplete: 'off', placeholder: i?.auth_header_name ? 'unchanged' : '' });
    const policy = h('select', { id: 'integration-policy' },
      h('option', { value: 'dead_letter', selected: !i || i.on_client_error === 'dead_letter' }, 'Set it aside as a dead letter'),
      h('option', { value: 'retry', selected: i && i.on_client_error === 'retry' }, 'Retry it, holding up the queue'));
    const num = (id, v, min, max) => h('input', { id, type: 'number', min, max, value: v === undefined ? '' : String(v) });
    const maxItems = num('integration-max-items', i ? i.max_items : 100, '1', '1000');
    const timeout = num('integration-timeout', i ? i.timeout_ms : 10000, '100', '120000');
    const paused = h('input', { type: 'checkbox', id: 'integration-paused' });
    const form = h('form', { class: 'inline-form', id: 'integration-form', 'aria-labelledby': 'integration-form-h' },
      field('Name', name), field('URL', url), field('Workspace', ws), field('Fleets', fleetSel, 'None chosen: every fleet'),
      kinds, field('Telemetry tags', tags, 'Comma-separated'),
      field('Auth header', authName), field('Auth header value', authValue, i ? 'Write-only: leave empty to keep it' : null),
      field('When the receiver refuses (4xx)', policy),
      field('Entries per request', maxItems), field('Timeout (ms)', timeout),
      i ? null : h('div', { class: 'field check' }, paused, h('label', { for: 'integration-paused' }, 'Create paused')),
      err,
      h('div', { class: 'form-buttons' },
        h('button', { type: 'submit', class: 'primary' }, i ? 'Save integration' : 'Create integration'),
        h('button', { type: 'button', onclick: () => clear(formBox) }, 'Cancel')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      const b = {
        name: name.value,
        url: url.value,
        workspace_id: ws.value || null,
        fleet_ids: [...fleetSel.selectedOptions].map((o) => o.value),
        kinds: [...kinds.querySelectorAll('input:checked')].map((c) => c.value),
        tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean),
        on_client_error: policy.value,
        max_items: Number(maxItems.value) || undefined,
        timeout_ms: Number(timeout.value) || undefined,
      };
      // The auth header's value is write-only: an edit sends it only when a new one is given,
      // or clears it when its name is emptied.
      if (authName.value.trim() && authValue.value) b.auth_header = { name: authName.value.trim(), value: authValue.value };
      else if (i && i.auth_header_name && !authName.value.trim()) b.auth_header = null;
      else if (!i) b.auth_header = undefined;
      try {
        if (i) {
          await api.patch(`/integrations/${i.id}`, b);
          toast(`Integration ${b.name} saved.`);
          announce(`Integration ${b.name} saved.`);
          reload();
        } else {
          if (b.workspace_id === null) delete b.workspace_id;
          const created = await api.post('/integrations', { ...b, paused: paused.checked || undefined });
          announce(`Integration ${created.integration.name} created.`);
          clear(formBox, h('h2', { id: 'integration-form-h' }, `Integration ${created.integration.name} created`),
            created.signing_secret ? secretBox('Signing secret (HMAC-SHA256, X-Corral-Signature)', created.signing_secret) : null,
            h('button', { type: 'button', id: 'integration-done', onclick: reload }, 'Done'));
        }
      } catch (e) {
        err.textContent = errorText(e);
      }
    });
    clear(formBox, h('h2', { id: 'integration-form-h', tabindex: '-1' }, i ? `Edit ${i.name}` : 'New integration'), form);
    formBox.querySelector('h2').focus();
  }

  const row = (i) => {
    let confirming = false;
    const del = h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${i.name}`, onclick: () => {
      if (!confirming) {
        confirming = true;
        del.textContent = 'Really delete?';
        announce(`Press again to delete ${i.name} with its queue and dead letters.`);
        return;
      }
      act(`Integration ${i.name} deleted.`, () => api.del(`/integrations/${i.id}`));
    } }, 'Delete');
    return h('tr', { 'data-integration': i.name },
      h('td', {}, i.name),
      h('td', {}, statusBadge(i.status.alarm ? 'alarm' : i.status.state)),
      h('td', {}, String(i.status.queue_depth)),
      h('td', {}, i.status.oldest_age_ms ? `${Math.round(i.status.oldest_age_ms / 1000)} s` : '—'),
      h('td', {}, String(i.status.dead_letters)),
      h('td', {}, i.status.last_error || '—', i.status.last_error_at ? h('small', { class: 'muted' }, ` (${fmtTime(i.status.last_error_at)})`) : null),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small', onclick: () => showDead(i) }, 'Dead letters'),
        h('button', { type: 'button', class: 'small', 'aria-label': `Edit ${i.name}`, onclick: () => showForm(i) }, 'Edit'),
        i.paused
          ? h('button', { type: 'button', class: 'small', 'aria-label': `Resume ${i.name}`, onclick: () => act(`Integration ${i.name} resumed.`, () => api.post(`/integrations/${i.id}/resume`)) }, 'Resume')
          : h('button', { type: 'button', class: 'small', 'aria-label': `Pause ${i.name}`, onclick: () => act(`Integration ${i.name} paused.`, () => api.post(`/integrations/${i.id}/pause`)) }, 'Pause'),
        h('button', { type: 'button', class: 'small', 'aria-label': `Send a test event to ${i.name}`, onclick: async () => {
          try {
            await api.post(`/integrations/${i.id}/test`);
            toast(`A test event is queued for ${i.name}.`);
            announce(`A test event is queued for ${i.name}.`);
          } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Test'),
        del));
  };

  clear(body,
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', id: 'integration-new', onclick: () => showForm(null) }, 'New integration')),
    formBox,
    table('Integrations', ['Name', 'State', 'Queue depth', 'Oldest queued', 'Dead letters', 'Last error', ''], items.map(row),
      { hideCaption: true, empty: 'No integrations yet.' }),
    details);
}
