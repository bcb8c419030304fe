// Campaigns: the OTA campaigns the caller sees — name, package, fleet, state, a progress bar of
// updated, failed and still open devices against the targets, when it was created — filtered by
// fleet (on the server) and by state (here: the API has no state filter); the way to a new
// campaign (campaign-new.js) and to each one's page (campaign.js); and, for server admins, the
// emergency stop that pauses every running campaign. The list follows campaign events and,
// while a campaign runs, reads itself again every few seconds. Also the helpers the campaign
// pages share: state names, the progress bar, and device names of a fleet.

import * as api from '../api.js';
import { h, clear, field, table, toast, announce, fmtTime, statusBadge, errorBox, errorText, debounce } from '../dom.js';
import { allFleets } from './fleets.js';
import { canOnFleet, serverAdmin, roleNote } from '../roles.js';

/** Campaign states, in the order a campaign goes through them. */
export const CAMPAIGN_STATES = ['draft', 'running', 'paused', 'completed', 'aborted', 'cancelled'];
/** Final campaign states: nothing more happens. */
export const FINAL = new Set(['completed', 'aborted', 'cancelled']);
/** Device states of an update (OtaState on the server), in order. */
export const DEVICE_STATES = ['pending', 'queued', 'initiated', 'downloading', 'downloaded', 'verified', 'updating', 'updated', 'failed', 'timed_out', 'cancelled'];

/** A campaign's devices: updated, failed (or timed out), cancelled and still open. */
export function tally(c) {
  const n = (s) => (c.counts && c.counts[s]) || 0;
  const updated = n('updated');
  const failed = n('failed') + n('timed_out');
  const cancelled = n('cancelled');
  const open = DEVICE_STATES.filter((s) => !['updated', 'failed', 'timed_out', 'cancelled'].includes(s)).reduce((a, s) => a + n(s), 0);
  return { updated, failed, cancelled, open, targets: c.targets };
}

/**
 * A stacked bar of updated, failed and open devices against the targets, with the same in
 * words beside it (the bar is a picture of the words, for those who see it).
 */
export function progressBar(c, id) {
  const t = tally(c);
  const words = c.state === 'draft' && !c.targets ? 'not started'
    : `${t.updated} updated · ${t.failed} failed · ${t.open} open of ${t.targets}${t.cancelled ? ` · ${t.cancelled} cancelled` : ''}`;
  const bar = h('span', { class: 'campaign-bar', 'aria-hidden': 'true' });
  const total = Math.max(t.targets, 1);
  for (const [cls, n] of [['seg-updated', t.updated], ['seg-failed', t.failed], ['seg-open', t.open]]) {
    if (!n) continue;
    const seg = h('span', { class: cls });
    // CSSOM, which the CSP allows (no inline style attribute).
    seg.style.width = `${Math.min(100, (n / total) * 100)}%`;
    bar.append(seg);
  }
  return h('span', { class: 'campaign-progress', id: id || null, 'data-updated': t.updated, 'data-failed': t.failed, 'data-open': t.open, 'data-targets': t.targets },
    bar, h('span', { class: 'campaign-progress-text' }, words));
}

/** A campaign's state badge, with its note (why it stands as it does) when it has one. */
export function stateCell(c) {
  return [statusBadge(c.state), c.note ? h('small', { class: 'muted campaign-note' }, ` ${c.note}`) : null];
}

const nameCache = new Map();
/**
 * Names of a fleet's devices (id → name), read in one listing of up to 1000 devices; a device
 * not among them is shown by its id.
 */
export async function deviceNames(fleetId) {
  if (!nameCache.has(fleetId)) {
    nameCache.set(fleetId, api.get(`/devices${api.qs({ fleet_id: fleetId, limit: 1000 })}`)
      .then((p) => new Map(p.items.map((d) => [d.id, d.name])), () => new Map()));
    // Devices come and go: read again on the next page.
    setTimeout(() => nameCache.delete(fleetId), 10000);
  }
  return nameCache.get(fleetId);
}

/** A link to a device's page, by name when known. */
export function deviceLink(names, id) {
  return h('a', { href: `#/devices/${id}`, class: 'device-link' }, names.get(id) || id);
}

export async function render(main, ctx) {
  const fleets = await allFleets();
  const fleetById = new Map(fleets.map((f) => [f.id, f]));
  const operates = fleets.some((f) => canOnFleet(f.workspace_id, f.id, 'operator'));
  const admin = serverAdmin();
  const f = { state: ctx.query.state || '', fleet_id: ctx.query.fleet_id || '' };

  const stateSel = h('select', { id: 'campaigns-state' }, h('option', { value: '' }, 'Any state'),
    CAMPAIGN_STATES.map((s) => h('option', { value: s, selected: s === f.state }, s)));
  const fleetSel = h('select', { id: 'campaigns-fleet' }, h('option', { value: '' }, 'Any fleet'),
    fleets.map((x) => h('option', { value: x.id, selected: x.id === f.fleet_id }, x.name)));
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter campaigns' }, field('State', stateSel), field('Fleet', fleetSel));
  filters.addEventListener('submit', (ev) => ev.preventDefault());
  const box = h('div', { id: 'campaigns-list', 'aria-busy': 'true' });
  const count = h('p', { id: 'campaigns-count', class: 'muted', 'aria-live': 'polite' });
  const live = h('span', { class: 'live-dot', id: 'live-state', title: 'live updates' }, 'connecting…');

  const fleetCell = (fid) => {
    const x = fleetById.get(fid);
    return x ? h('a', { href: `#/fleets/${x.id}` }, x.name) : h('code', {}, fid);
  };

  let list = [];
  let loadSeq = 0;
  async function load() {
    const seq = ++loadSeq;
    box.setAttribute('aria-busy', 'true');
    try {
      list = await api.get(`/campaigns${api.qs({ fleet_id: f.fleet_id })}`);
    } catch (e) {
      if (seq === loadSeq && ctx.current()) clear(box, errorBox(e));
      return;
    }
    if (seq !== loadSeq || !ctx.current()) return;
    const shown = list.filter((c) => !f.state || c.state === f.state);
    clear(box, table('Campaigns', ['Name', 'Package', 'Fleet', 'State', 'Progress', 'Created'], shown.map((c) => h('tr', { 'data-campaign-id': c.id, 'data-name': c.name, 'data-state': c.state },
      h('th', { scope: 'row' }, h('a', { href: `#/campaigns/${c.id}` }, c.name)),
      h('td', {}, `${c.title} ${c.version}`, h('small', { class: 'muted' }, ` ${c.type}`)),
      h('td', {}, fleetCell(c.fleet_id)),
      h('td', { class: 'state-cell' }, stateCell(c)),
      h('td', {}, progressBar(c)),
      h('td', {}, fmtTime(c.created_at)))),
    { hideCaption: true, class: 'campaigns', empty: f.state || f.fleet_id ? 'No campaign matches.' : 'No campaigns yet.' }));
    box.setAttribute('aria-busy', 'false');
    count.textContent = `${shown.length} campaign${shown.length === 1 ? '' : 's'}`;
  }
  const refresh = debounce(load, 500);

  const refilter = () => {
    if (!ctx.current()) return;
    f.state = stateSel.value;
    f.fleet_id = fleetSel.value;
    history.replaceState(null, '', `#/campaigns${api.qs(f)}`);
    load();
  };
  stateSel.addEventListener('change', refilter);
  fleetSel.addEventListener('change', refilter);

  // ---- the emergency stop ----
  const stopResult = h('div', { id: 'stop-all-result', 'aria-live': 'polite' });
  const stopBox = admin ? h('div', {},
    h('p', { class: 'muted' }, 'Pauses every running campaign of this server at once. Devices already updating finish their update; no other device starts until each campaign is resumed.'),
    h('button', { type: 'button', class: 'danger', id: 'stop-all', onclick: async (ev) => {
      if (!window.confirm('Stop all campaigns? Every running campaign of this server is paused now; each must then be resumed on its own.')) return;
      const btn = ev.currentTarget;
      btn.disabled = true;
      try {
        const r = await api.post('/campaigns/stop');
        const n = r.paused.length;
        const text = n ? `Emergency stop: ${n} campaign${n === 1 ? '' : 's'} paused.` : 'Emergency stop: no campaign was running.';
        clear(stopResult, h('p', { class: 'notice warn', role: 'status' }, text));
        announce(text);
        await load();
      } catch (e) {
        clear(stopResult, errorBox(e));
        toast(errorText(e), 'error');
      } finally {
        btn.disabled = false;
      }
    } }, 'Stop all campaigns'), stopResult)
    : roleNote('admin', 'The emergency stop of every campaign', 'server');

  clear(main, h('h1', {}, 'Campaigns ', live),
    h('p', { class: 'muted' }, 'OTA campaigns roll a package out to a fleet\'s devices in waves, with a success gate, an error threshold and deadlines, and follow each device until it runs the new version.'),
    h('section', { 'aria-labelledby': 'campaigns-h' }, h('h2', { id: 'campaigns-h' }, 'All campaigns'),
      operates ? h('p', {}, h('a', { href: '#/campaigns/new', class: 'button primary', id: 'new-campaign' }, 'New campaign'))
        : roleNote('operator', 'Creating campaigns'),
      filters, count, box),
    h('section', { 'aria-labelledby': 'stop-h', id: 'emergency-stop' }, h('h2', { id: 'stop-h' }, 'Emergency stop'), stopBox));
  await load();

  // Live: campaign changes and each device's step reach everyone who sees the fleet; the list
  // is read again (at most twice a second) on any of them, after a gap in the stream, and when
  // the stream comes back, so nothing is missed without polling.
  // The first connection reads again too: events between the first read and it are not lost.
  let wasUp = false;
  ctx.cleanup(api.events({ kinds: 'campaign,ota_device' }, () => refresh(), (up) => {
    live.textContent = up ? 'live' : 'reconnecting…';
    live.classList.toggle('up', up);
    if (up && !wasUp) refresh();
    wasUp = up;
  }));
}
