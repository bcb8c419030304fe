// One OTA campaign (`#/campaigns/{id}`): its state and the note that says why, its approval, its
// package, fleet and rules; the actions its state and the caller's role allow (approve for the
// fleet's admins — the server refuses it to the campaign's creator —, start, pause, resume,
// cancel, the install command of a download-only campaign, delete a draft; the destructive
// ones confirmed); its progress (a bar, and devices per state), its waves, the devices that
// failed with their reason, and every device with its timeline, filtered by state. While it
// runs the page follows the campaign's events and reads itself again every 2 s.

import * as api from '../api.js';
import { h, clear, field, table, toast, announce, fmtTime, statusBadge, errorBox, errorText, debounce } from '../dom.js';
import { roleOnFleet, allows, roleNote, roleText } from '../roles.js';
import { FINAL, DEVICE_STATES, progressBar, deviceNames, deviceLink } from './campaigns.js';

/** Most device rows shown at once (a campaign may have 100 000). */
// Rows per page of the campaign's devices, and the most the API gives in one page.
const PAGE = 100;
const MAX_PAGE = 1000;

const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const secs = (s) => (s % 86400 === 0 ? plural(s / 86400, 'day') : s % 3600 === 0 ? `${s / 3600} h` : s % 60 === 0 ? `${s / 60} min` : `${s} s`);

/** A device's timeline: each transition with its time and what moved it. */
export function timelineList(timeline) {
  return h('ol', { class: 'timeline' }, timeline.map((t) => h('li', { 'data-state': t.state },
    h('time', { datetime: new Date(t.at).toISOString() }, fmtTime(t.at)), ' ', statusBadge(t.state),
    t.detail ? h('span', { class: 'timeline-detail' }, ` ${t.detail}`) : null)));
}

/** The campaign's rules in words. */
function rules(c) {
  const p = c.policy;
  const waves = p.waves.length ? p.waves.map((w) => (w.devices !== undefined ? plural(w.devices, 'device') : `${w.percent} %`)).join(', ') + ', then the rest' : 'one wave';
  const rate = p.per_minute ? `${p.per_minute} devices a minute${p.rate_factor > 1 ? `, ×${p.rate_factor} every ${p.rate_step} updated, at most ${p.max_per_minute}` : ''}` : 'a whole wave at once';
  const win = p.window ? `${p.window.start}–${p.window.end} ${p.window.tz}${p.window.days && p.window.days.length ? ` on ${p.window.days.join(', ')}` : ''}` : 'any time';
  return [
    ['Waves', waves],
    ['Rate', rate],
    ['Success gate', `${p.success_pct} % of a wave updated${p.soak_secs ? `, then ${secs(p.soak_secs)} of soak` : ''}`],
    ['Error threshold', p.failure_pct ? `${p.on_failure} at ${p.failure_pct} % failed, once ${plural(p.min_sample, 'device')} finished` : 'none'],
    ['Deadlines', `online ${secs(p.start_timeout_secs)} · download ${secs(p.download_timeout_secs)} · install ${secs(p.install_timeout_secs)} · confirm ${secs(p.confirm_timeout_secs)}`],
    ['Retries', `${p.retries_failed} after a failure, ${p.retries_timed_out} after a timeout, from ${secs(p.retry_backoff_secs)}`],
    ['Updated when', p.require_reconnect ? 'it reports the new version after reconnecting' : 'it reports UPDATED'],
    ['Window', win],
    ['When it completes', p.assign_fleet ? 'the package becomes the fleet\'s target' : 'the fleet\'s target stays'],
    ['When it aborts', p.rollback_package_id ? 'a rollback campaign to the former target starts' : 'no rollback'],
  ];
}

export async function render(main, ctx) {
  const id = ctx.params[0];
  const base = `/campaigns/${id}`;
  let c = await api.get(base);
  const fleet = await api.get(`/fleets/${c.fleet_id}`).catch(() => null);
  const role = fleet ? roleOnFleet(fleet.workspace_id, fleet.id) : undefined;
  const operate = allows(role, 'operator');
  const approver = allows(role, 'admin');
  const me = api.session.user ? api.session.user.username : null;
  let names = await deviceNames(c.fleet_id);

  const stateEl = h('span', { id: 'campaign-state', 'aria-live': 'polite' });
  const live = h('span', { class: 'live-dot', id: 'live-state', title: 'live updates' }, 'connecting…');
  const sections = {
    summary: h('section', { id: 'campaign-summary', 'aria-labelledby': 'summary-h' }),
    progress: h('section', { id: 'campaign-progress', 'aria-labelledby': 'progress-h' }),
    waves: h('section', { id: 'campaign-waves', 'aria-labelledby': 'waves-h' }),
    failing: h('section', { id: 'campaign-failing', 'aria-labelledby': 'failing-h' }),
    devices: h('section', { id: 'campaign-devices', 'aria-labelledby': 'devices-h' }),
  };
  const actionsBox = h('div', { class: 'actions', id: 'campaign-actions' });
  const actionResult = h('div', { id: 'campaign-action-result', 'aria-live': 'polite' });
  const factsBox = h('div', {});
  clear(sections.summary, h('h2', { id: 'summary-h' }, 'State and actions'), factsBox, actionsBox, actionResult,
    h('details', { id: 'campaign-rules' }, h('summary', {}, 'Rules'), h('dl', { class: 'facts' }, rules(c).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))));
  clear(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/campaigns' }, 'Campaigns'), ' / ', fleet ? h('a', { href: `#/campaigns?fleet_id=${fleet.id}` }, fleet.name) : c.fleet_id),
    h('h1', {}, c.name, ' ', stateEl, ' ', live),
    ...Object.values(sections));

  // ---- state, approval, actions ----
  function approvalText() {
    if (!c.approval_required) return 'not needed';
    if (c.approved_by) return `approved by ${c.approved_by}, ${fmtTime(c.approved_at)}`;
    return `waiting for the approval of an admin other than ${c.created_by}`;
  }
  function renderFacts() {
    clear(stateEl, statusBadge(c.state));
    clear(factsBox, h('dl', { class: 'facts' },
      h('dt', {}, 'State'), h('dd', { id: 'campaign-state-text', 'data-state': c.state }, statusBadge(c.state), c.note ? h('span', { id: 'campaign-note' }, ` ${c.note}`) : null),
      h('dt', {}, 'Approval'), h('dd', { id: 'campaign-approval', 'data-approved': c.approval_required ? (c.approved_by ? 'yes' : 'no') : 'not-needed' }, approvalText()),
      h('dt', {}, 'Package'), h('dd', {}, h('a', { href: `#/packages?id=${c.package_id}` }, `${c.title} ${c.version}`), ` (${c.type})`),
      h('dt', {}, 'Fleet'), h('dd', {}, fleet ? h('a', { href: `#/fleets/${fleet.id}` }, fleet.name) : c.fleet_id),
      c.filter ? [h('dt', {}, 'Only devices'), h('dd', {}, Object.entries(c.filter).map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : v}`).join('; '))] : null,
      h('dt', {}, 'Targets'), h('dd', { id: 'campaign-targets' }, c.state === 'draft' ? 'fixed when it starts' : plural(c.targets, 'device')),
      h('dt', {}, 'Install'), h('dd', {}, c.policy.install === 'download_only'
        ? (c.install_requested_at ? `download only; install command sent ${fmtTime(c.install_requested_at)}` : 'download only; waiting for the install command')
        : 'right after the download'),
      h('dt', {}, 'Created'), h('dd', {}, `${fmtTime(c.created_at)} by ${c.created_by}`),
      c.started_at ? [h('dt', {}, 'Started'), h('dd', {}, fmtTime(c.started_at))] : null,
      c.finished_at ? [h('dt', {}, 'Finished'), h('dd', {}, fmtTime(c.finished_at))] : null,
      c.rollback_of ? [h('dt', {}, 'Rolls back'), h('dd', {}, h('a', { href: `#/campaigns/${c.rollback_of}` }, 'the campaign it undoes'))] : null,
      role !== undefined ? [h('dt', {}, 'Your role'), h('dd', { id: 'campaign-role' }, roleText(role))] : null));
  }

  /** A button that POSTs an action and shows the campaign it returns. */
  const action = (verb, label, opts = {}) => h('button', { type: 'button', class: opts.cls || '', id: `campaign-${verb}`, onclick: async (ev) => {
    if (opts.confirm && !window.confirm(opts.confirm)) return;
    const btn = ev.currentTarget;
    btn.disabled = true;
    clear(actionResult);
    try {
      if (verb === 'delete') {
        await api.del(base);
        toast(`Draft ${c.name} deleted.`);
        announce(`Draft ${c.name} deleted.`);
        ctx.go('/campaigns');
        return;
      }
      c = await api.post(`${base}/${verb}`);
      announce(`${label}: the campaign is ${c.state}.`);
      actionsKey = null;
      await refresh();
    } catch (e) {
      clear(actionResult, errorBox(e));
      toast(errorText(e), 'error');
    } finally {
      btn.disabled = false;
    }
  } }, label);

  let actionsKey = null;
  function renderActions() {
    // Only when what they depend on changed: a refresh must not take the focus off a button.
    const key = [c.state, c.approved_by, c.install_requested_at].join('|');
    if (key === actionsKey) return;
    actionsKey = key;
    const buttons = [];
    const notes = [];
    const downloadOnly = c.policy.install === 'download_only' && !c.install_requested_at;
    if (c.state === 'draft') {
      const waiting = c.approval_required && !c.approved_by;
      if (waiting && approver) {
        buttons.push(action('approve', 'Approve'));
        if (me && me === c.created_by) notes.push(h('p', { class: 'muted', id: 'campaign-approve-hint' }, 'You created this campaign: the server accepts the approval of another admin only.'));
      } else if (waiting) {
        notes.push(roleNote('admin', 'Approving the campaign'));
      }
      if (operate) {
        if (!waiting) buttons.push(action('start', 'Start', { cls: 'primary', confirm: `Start campaign ${c.name}? Its targets are fixed now and its first wave starts: devices are told of ${c.title} ${c.version}.` }));
        buttons.push(action('delete', 'Delete draft', { cls: 'danger', confirm: `Delete the draft campaign ${c.name}?` }));
      }
    } else if (c.state === 'running' || c.state === 'paused') {
      if (operate) {
        buttons.push(c.state === 'running' ? action('pause', 'Pause') : action('resume', 'Resume', { cls: 'primary' }));
        if (downloadOnly) buttons.push(action('install', 'Send the install command', { confirm: `Tell the devices of ${c.name} that downloaded ${c.title} ${c.version} to install it now? Devices that finish their download later install then.` }));
        buttons.push(action('cancel', 'Cancel campaign', { cls: 'danger', confirm: `Cancel campaign ${c.name}? Devices not told of the package yet are cancelled; devices already updating finish. It cannot be resumed.` }));
      }
    } else {
      notes.push(h('p', { class: 'muted' }, 'Finished: nothing more happens to this campaign.'));
    }
    const needsOperator = !operate && !FINAL.has(c.state)
      ? roleNote('operator', c.state === 'draft' ? 'Starting or deleting the campaign' : 'Pausing, resuming and cancelling the campaign') : null;
    clear(actionsBox, buttons, notes, needsOperator);
  }

  // ---- progress, waves, failing devices ----
  function renderProgress() {
    const counts = DEVICE_STATES.filter((s) => c.counts[s]).map((s) => h('tr', { 'data-state': s }, h('th', { scope: 'row' }, statusBadge(s)), h('td', { class: 'count' }, String(c.counts[s]))));
    clear(sections.progress, h('h2', { id: 'progress-h' }, 'Progress'),
      progressBar(c, 'campaign-progress-bar'),
      h('div', { id: 'campaign-counts' }, table('Devices per state', ['State', 'Devices'], counts, { empty: c.state === 'draft' ? 'Not started.' : 'No devices.' })));
    clear(sections.waves, h('h2', { id: 'waves-h' }, 'Waves'),
      table('Waves', ['Wave', 'Devices', 'Started', 'Updated', 'Failed', 'Open'], c.waves.map((w) => h('tr', { 'data-wave': w.index, 'data-started': w.started ? 'yes' : 'no' },
        h('th', { scope: 'row' }, `Wave ${w.index + 1}`),
        h('td', { class: 'wave-devices' }, String(w.devices)),
        h('td', {}, w.started ? 'yes' : 'not yet'),
        h('td', { class: 'wave-updated' }, String(w.updated)),
        h('td', { class: 'wave-failed' }, String(w.failed)),
        h('td', { class: 'wave-open' }, String(w.open)))),
      { hideCaption: true, empty: 'The waves are fixed when the campaign starts.' }));
    clear(sections.failing, h('h2', { id: 'failing-h' }, 'Failed devices'),
      h('p', { class: 'muted' }, 'Devices that failed or timed out for good (up to 50), with the reason.'),
      table('Failed devices', ['Device', 'State', 'Attempts', 'Reason'], c.failing.map((f) => h('tr', { 'data-device-id': f.device_id },
        h('th', { scope: 'row' }, deviceLink(names, f.device_id)),
        h('td', {}, statusBadge(f.state)),
        h('td', {}, String(f.attempts)),
        h('td', { class: 'reason' }, f.error || '—'))),
      { hideCaption: true, empty: 'No device failed.' }));
  }

  // ---- every device ----
  const stateSel = h('select', { id: 'campaign-devices-state' }, h('option', { value: '' }, 'Any state'),
    DEVICE_STATES.map((s) => h('option', { value: s, selected: s === ctx.query.state }, s)));
  const devBox = h('div', { id: 'campaign-devices-list', 'aria-busy': 'true' });
  const devCount = h('p', { class: 'muted', id: 'campaign-devices-count', 'aria-live': 'polite' });
  const openTimelines = new Set();
  clear(sections.devices, h('h2', { id: 'devices-h' }, 'Devices'),
    h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter devices', onsubmit: (ev) => ev.preventDefault() }, field('State', stateSel)),
    devCount, devBox);
  let devSeq = 0;
  // The rows shown so far and where the next page starts; a refresh reads as many rows again.
  let list = [];
  let nextCursor = null;
  // Paging is reading: offered to everyone who sees the campaign, and only while more follow.
  const more = h('button', { type: 'button', id: 'campaign-devices-more' }, 'Show more devices');
  async function renderDevices({ append = false } = {}) {
    const seq = ++devSeq;
    let page;
    try {
      const limit = append ? PAGE : Math.min(Math.max(PAGE, list.length), MAX_PAGE);
      page = await api.get(`${base}/devices${api.qs({ state: stateSel.value, limit, cursor: append ? nextCursor : '' })}`);
    } catch (e) {
      if (seq === devSeq && ctx.current()) clear(devBox, errorBox(e));
      return;
    }
    if (seq !== devSeq || !ctx.current()) return;
    list = append ? list.concat(page.items) : page.items;
    nextCursor = page.next_cursor;
    clear(devBox, table('Devices of the campaign', ['Device', 'Wave', 'State', 'Attempts', 'Reports', 'Error', 'Timeline'], list.map((u) => {
      const last = u.timeline[u.timeline.length - 1];
      const tl = h('details', { class: 'timeline-box', open: openTimelines.has(u.device_id) },
        h('summary', {}, last ? `${fmtTime(last.at)} · ${plural(u.timeline.length, 'step')}` : '—'), timelineList(u.timeline));
      tl.addEventListener('toggle', () => { if (tl.open) openTimelines.add(u.device_id); else openTimelines.delete(u.device_id); });
      return h('tr', { 'data-device-id': u.device_id, 'data-state': u.state },
        h('th', { scope: 'row' }, h('a', { href: `#/devices/${u.device_id}`, class: 'device-link' }, u.device_name || u.device_id)),
        h('td', {}, String(u.wave + 1)),
        h('td', {}, statusBadge(u.state)),
        h('td', {}, String(u.attempts)),
        h('td', {}, u.reported_version || '—'),
        h('td', { class: 'reason' }, u.error || '—'),
        h('td', {}, tl));
    }), { hideCaption: true, class: 'campaign-devices', empty: stateSel.value ? `No device is ${stateSel.value}.` : c.state === 'draft' ? 'The devices are fixed when the campaign starts.' : 'No devices.' }));
    devBox.setAttribute('aria-busy', 'false');
    if (nextCursor) devBox.after(more); else more.remove();
    // All shown: count the rows; more follow: the campaign's own count of them.
    const total = !nextCursor ? list.length
      : stateSel.value ? (c.counts[stateSel.value] || list.length)
        : Object.values(c.counts || {}).reduce((a, n) => a + n, 0);
    devCount.textContent = `${plural(total, 'device')}${stateSel.value ? ` ${stateSel.value}` : ''}${nextCursor ? ` (the first ${list.length} shown)` : ''}`;
  }
  more.addEventListener('click', () => renderDevices({ append: true }));
  stateSel.addEventListener('change', () => {
    history.replaceState(null, '', `#/campaigns/${id}${api.qs({ state: stateSel.value })}`);
    list = [];
    renderDevices();
  });

  function show() {
    renderFacts();
    renderActions();
    renderProgress();
  }
  async function refresh() {
    try {
      const next = await api.get(base);
      if (!ctx.current()) return;
      if (next.state !== c.state) announce(`The campaign is ${next.state}${next.note ? `: ${next.note}` : ''}.`);
      c = next;
    } catch (e) {
      if (ctx.current()) clear(actionResult, errorBox(e));
      return;
    }
    show();
    await renderDevices();
  }
  show();
  await renderDevices();

  // ---- live ----
  const again = debounce(refresh, 400);
  // Every device step and campaign change is an event for everyone who sees the fleet; a gap
  // in the stream (lagged, or a reconnect) reads the page again, so it needs no polling.
  // The first connection reads again too: events between the first read and it are not lost.
  let wasUp = false;
  ctx.cleanup(api.events({ kinds: 'ota_device,campaign' }, (kind, ev) => {
    if (kind === 'lagged' || (ev && ev.campaign_id === id)) again();
  }, (up) => {
    live.textContent = up ? 'live' : 'reconnecting…';
    live.classList.toggle('up', up);
    if (up && !wasUp) again();
    wasUp = up;
  }));
}
