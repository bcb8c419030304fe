// Jobs: rollouts with their progress across every fleet, or one fleet's (send one, cancel one),
// and every schedule (run now, enable, disable, delete). Single-device jobs live on the device page. Sending,
// cancelling and scheduling need the operator role on the fleet (roles.js).

import * as api from '../api.js';
import { h, clear, field, table, onSubmit, toast, announce, timeEl, fmtTime, statusBadge, errorBox, errorText } from '../dom.js';
import { allFleets } from './fleets.js';
import { canOnFleet, roleNote } from '../roles.js';

function progressText(p) {
  return Object.entries(p || {}).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ') || '—';
}

export async function render(main, ctx) {
  const fleets = await allFleets();
  const fleetName = Object.fromEntries(fleets.map((f) => [f.id, f.name]));
  // Whether the caller operates a fleet (a fleet not listed here: the server decides).
  const operates = (fid) => {
    const f = fleets.find((x) => x.id === fid);
    return !f || canOnFleet(f.workspace_id, f.id, 'operator');
  };
  const ownFleets = fleets.filter((f) => operates(f.id));
  // '' lists the rollouts of every fleet, so a running one never hides behind a selector.
  let fleetId = ctx.query.fleet_id || '';
  const fleetSel = h('select', { id: 'jobs-fleet' }, h('option', { value: '' }, 'All fleets'),
    fleets.map((f) => h('option', { value: f.id, selected: f.id === fleetId }, f.name)));
  const rollouts = h('div', { id: 'fleet-jobs' });
  const schedules = h('div', { id: 'schedules' });

  // Every fleet's rollouts: one request per fleet, ten at a time.
  async function allRollouts() {
    const out = [];
    for (let i = 0; i < fleets.length; i += 10) {
      const part = await Promise.all(fleets.slice(i, i + 10).map((f) => api.get(`/fleets/${f.id}/jobs`).catch(() => [])));
      out.push(...part.flat());
    }
    return out;
  }

  async function renderRollouts() {
    if (!fleets.length) { clear(rollouts, h('p', { class: 'muted' }, 'No fleets yet.')); return; }
    try {
      const list = (fleetId ? await api.get(`/fleets/${fleetId}/jobs`) : await allRollouts())
        .sort((a, b) => (a.state === 'running') !== (b.state === 'running') ? (a.state === 'running' ? -1 : 1) : b.created_at - a.created_at);
      clear(rollouts, table('Fleet jobs', ['Method', 'Fleet', 'State', 'Devices', 'Progress', 'Created', ''], list.map((j) => {
        const done = Object.entries(j.progress).filter(([k]) => ['succeeded', 'failed', 'expired', 'cancelled'].includes(k)).reduce((n, [, v]) => n + v, 0);
        return h('tr', { 'data-fleet': j.fleet_id },
          h('td', {}, j.method),
          h('td', {}, h('a', { href: `#/fleets/${j.fleet_id}` }, fleetName[j.fleet_id] || j.fleet_id)),
          h('td', {}, statusBadge(j.state), j.note ? h('small', { class: 'muted' }, ` ${j.note}`) : ''),
          h('td', {}, String(j.devices.length)),
          h('td', {}, h('progress', { max: String(Math.max(j.devices.length, 1)), value: String(done), 'aria-label': `${done} of ${j.devices.length} finished` }), ' ', progressText(j.progress)),
          h('td', {}, timeEl(j.created_at)),
          h('td', {}, j.state === 'running' && operates(j.fleet_id) ? h('button', { type: 'button', class: 'small', onclick: async () => {
            try { await api.post(`/fleet-jobs/${j.id}/cancel`); renderRollouts(); } catch (e) { toast(errorText(e), 'error'); }
          } }, 'Cancel') : null));
      }), { hideCaption: true, empty: 'No fleet jobs.' }));
    } catch (e) {
      clear(rollouts, errorBox(e));
    }
  }

  async function renderSchedules() {
    try {
      const list = await api.get('/schedules');
      const act = (s, verb) => async () => {
        try {
          if (verb === 'delete') {
            if (!window.confirm(`Delete schedule ${s.name}?`)) return;
            await api.del(`/schedules/${s.id}`);
          } else {
            await api.post(`/schedules/${s.id}/${verb}`);
          }
          announce(`Schedule ${s.name}: ${verb} done.`);
          renderSchedules();
        } catch (e) { toast(errorText(e), 'error'); }
      };
      clear(schedules, table('Schedules', ['Name', 'Target', 'Method', 'When', 'Next run', 'Last run', 'Runs', ''], list.map((s) => h('tr', {},
        h('td', {}, s.name),
        h('td', {}, s.fleet_id ? `fleet ${fleetName[s.fleet_id] || s.fleet_id}` : h('a', { href: `#/devices/${s.device_id}` }, 'device')),
        h('td', {}, s.method),
        h('td', {}, s.trigger.cron ? `cron ${s.trigger.cron.expr} (${s.trigger.cron.tz})` : `at ${fmtTime(s.trigger.at)}`),
        h('td', {}, s.enabled ? fmtTime(s.next_run_at) : 'disabled'),
        h('td', {}, s.last_run_at ? [fmtTime(s.last_run_at), s.last_result ? h('small', { class: 'muted' }, ` ${s.last_result}`) : ''] : '—'),
        h('td', {}, String(s.runs)),
        h('td', { class: 'actions' }, !s.fleet_id || operates(s.fleet_id) ? [
          h('button', { type: 'button', class: 'small', onclick: act(s, 'run') }, 'Run now'),
          h('button', { type: 'button', class: 'small', onclick: act(s, s.enabled ? 'disable' : 'enable') }, s.enabled ? 'Disable' : 'Enable'),
          h('button', { type: 'button', class: 'small danger', onclick: act(s, 'delete') }, 'Delete')]
          : h('small', { class: 'role-note', 'data-needs': 'operator' }, 'needs the operator role')))), { hideCaption: true, empty: 'No schedules.' }));
    } catch (e) {
      clear(schedules, errorBox(e));
    }
  }

  const form = onSubmit(h('form', { class: 'inline-form', id: 'fleet-job-form', 'aria-labelledby': 'fj-h' },
    h('h3', { id: 'fj-h' }, 'Send a command to the fleet'),
    field('Fleet', h('select', { name: 'fleet_id', id: 'fj-fleet' }, ownFleets.map((f) => h('option', { value: f.id, selected: f.id === fleetId }, f.name)))),
    field('Method', h('input', { name: 'method', required: true, autocomplete: 'off' })),
    field('Parameters (JSON)', h('textarea', { name: 'params', rows: '2', spellcheck: 'false' }, '{}')),
    h('div', { class: 'field check' }, h('input', { type: 'checkbox', name: 'two_way', id: 'fj-two-way' }), h('label', { for: 'fj-two-way' }, 'Two-way (wait for replies)')),
    field('Devices per minute', h('input', { name: 'per_minute', type: 'number', min: '0', value: '0' }), '0 starts all at once'),
    field('Abort at failure %', h('input', { name: 'abort_failure_pct', type: 'number', min: '1', max: '100' })),
    h('button', { type: 'submit', class: 'primary' }, 'Start rollout')), async (d) => {
    let params = {};
    try { params = JSON.parse(String(d.get('params') || '{}')); } catch { throw new Error('Parameters are not valid JSON.'); }
    const body = { method: d.get('method'), params, two_way: d.get('two_way') === 'on', per_minute: Number(d.get('per_minute') || 0) };
    if (d.get('abort_failure_pct')) body.abort_failure_pct = Number(d.get('abort_failure_pct'));
    const fj = await api.post(`/fleets/${d.get('fleet_id')}/jobs`, body);
    announce(`Rollout started to ${fj.devices.length} devices.`);
    form.reset();
    renderRollouts();
  });

  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  const scheduleForm = onSubmit(h('form', { class: 'inline-form', id: 'schedule-form', 'aria-labelledby': 'sched-new' },
    h('h3', { id: 'sched-new' }, 'New fleet schedule'),
    field('Name', h('input', { name: 'name', required: true, id: 'schedule-name', autocomplete: 'off' })),
    field('Fleet', h('select', { name: 'fleet_id', id: 'schedule-fleet' }, ownFleets.map((f) => h('option', { value: f.id, selected: f.id === fleetId }, f.name)))),
    field('Method', h('input', { name: 'method', required: true, id: 'schedule-method', autocomplete: 'off' })),
    field('Parameters (JSON)', h('textarea', { name: 'params', rows: '1', spellcheck: 'false' }, '{}')),
    field('Cron expression', h('input', { name: 'cron', id: 'schedule-cron', placeholder: '30 2 * * 1-5', autocomplete: 'off' }), 'minute hour day month weekday, or @daily'),
    field('Time zone', h('input', { name: 'tz', id: 'schedule-tz', value: tz, autocomplete: 'off' })),
    field('…or once at', h('input', { name: 'at', id: 'schedule-at', type: 'datetime-local' })),
    h('button', { type: 'submit', class: 'primary' }, 'Create schedule')), async (d) => {
    let params = {};
    try { params = JSON.parse(String(d.get('params') || '{}')); } catch { throw new Error('Parameters are not valid JSON.'); }
    let trigger;
    if (d.get('at')) trigger = { at: new Date(String(d.get('at'))).getTime() };
    else if (d.get('cron')) trigger = { cron: { expr: String(d.get('cron')).trim(), tz: String(d.get('tz') || 'UTC').trim() } };
    else throw new Error('Give a cron expression or a time.');
    const sc = await api.post('/schedules', { name: d.get('name'), fleet_id: d.get('fleet_id'), method: d.get('method'), params, trigger });
    announce(`Schedule ${sc.name} created; next run ${fmtTime(sc.next_run_at)}.`);
    scheduleForm.reset();
    renderSchedules();
  });

  // The rollout form, or why the selected fleet offers none.
  const formBox = h('div', { id: 'fleet-job-form-box' });
  const showForm = () => {
    const sel = form.querySelector('#fj-fleet');
    if (fleetId && ownFleets.some((f) => f.id === fleetId)) sel.value = fleetId;
    clear(formBox, !fleets.length ? null : ownFleets.length && (!fleetId || operates(fleetId)) ? form : roleNote('operator', 'Sending commands to this fleet'));
  };
  fleetSel.addEventListener('change', () => {
    fleetId = fleetSel.value;
    history.replaceState(null, '', `#/jobs${api.qs({ fleet_id: fleetId })}`);
    showForm();
    renderRollouts();
  });
  showForm();

  clear(main, h('h1', {}, 'Jobs'),
    h('section', { 'aria-labelledby': 'rollouts-h' }, h('h2', { id: 'rollouts-h' }, 'Fleet jobs'),
      fleets.length ? field('Fleet', fleetSel) : null, rollouts, formBox),
    h('section', { 'aria-labelledby': 'schedules-h' }, h('h2', { id: 'schedules-h' }, 'Schedules'), schedules,
      !fleets.length ? null : ownFleets.length ? scheduleForm : roleNote('operator', 'Creating schedules'),
      h('p', { class: 'muted' }, 'Device schedules, filters and maintenance windows: the CLI (corral schedule create) or the API (POST /api/v1/schedules).')));
  await Promise.all([renderRollouts(), renderSchedules()]);
  // Every fleet's list costs a request per fleet: refreshed less often than one fleet's.
  const timer = setInterval(() => { if (fleetId || fleets.length <= 20) renderRollouts(); }, fleetId ? 5000 : 10000);
  ctx.cleanup(() => clearInterval(timer));
}
