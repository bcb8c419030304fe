// A new OTA campaign: the form behind `#/campaigns/new` (optionally `?package_id=&fleet_id=`, as
// the Packages page's "Roll out" links it) — fleet, package (the fleet's own or one for all
// fleets), name, which devices, the waves (rows of N devices or P %), the rate, the success
// gate with its soak time, the error threshold, download-only, a maintenance window, approval
// and rollback, and in a folded "advanced" part the deadlines, retries and rate growth. Its
// Preview asks the server for a dry run (targets, already updated, devices per wave, when the
// last device would start, notes); Create stores a draft from the same values once they have
// been previewed, and opens it (campaign.js). A value the server refuses (422, `field: why`) is
// shown at that field. Creating needs the operator role on the fleet (roles.js).

import * as api from '../api.js';
import { h, clear, field, toast, announce, fmtTime, errorBox, errorText, uid } from '../dom.js';
import { allFleets } from './fleets.js';
import { canOnFleet, roleNote } from '../roles.js';
import { deviceNames } from './campaigns.js';

const DAYS = [['mon', 'Mon'], ['tue', 'Tue'], ['wed', 'Wed'], ['thu', 'Thu'], ['fri', 'Fri'], ['sat', 'Sat'], ['sun', 'Sun']];

/** The request field a refusal names: `failure_pct: must be 1 to 100` → `failure_pct`. */
export function refusedField(e) {
  const m = /^([a-z_]+)(?:[.[][^:]*)?:/.exec(e.message || '') || /target type: ([a-z_]+)/.exec(e.message || '');
  return m ? m[1] : null;
}

const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

export async function render(main, ctx) {
  const fleets = (await allFleets()).filter((f) => canOnFleet(f.workspace_id, f.id, 'operator'));
  const heading = h('h1', {}, 'New campaign');
  const crumbs = h('p', { class: 'crumbs' }, h('a', { href: '#/campaigns' }, 'Campaigns'), ' / new');
  if (!fleets.length) {
    clear(main, crumbs, heading, roleNote('operator', 'Creating a campaign'));
    return;
  }
  // A package named in the address picks its fleet (one for all fleets: the first, or the one named).
  let wanted = null;
  if (ctx.query.package_id) wanted = await api.get(`/packages/${ctx.query.package_id}`).catch(() => null);
  const firstFleet = (wanted && wanted.fleet_id && fleets.some((f) => f.id === wanted.fleet_id) && wanted.fleet_id)
    || (fleets.some((f) => f.id === ctx.query.fleet_id) && ctx.query.fleet_id) || fleets[0].id;

  // Every control the server may name in a refusal, by request field.
  const at = {};
  const errorOf = new Map(); // control → its error element
  /** A labelled field with a slot for the server's refusal of it. */
  const ffield = (name, label, control, hint) => {
    at[name] = control;
    const box = field(label, control, hint);
    const err = h('p', { class: 'field-error', id: `${control.id}-error`, hidden: true });
    box.append(err);
    errorOf.set(control, err);
    return box;
  };
  const num = (id, attrs = {}) => h('input', { type: 'number', id, inputmode: 'numeric', ...attrs });
  const check = (id, label, checked, hint) => {
    const c = h('input', { type: 'checkbox', id, checked });
    const hintEl = hint ? h('small', { id: `${id}-hint`, class: 'muted' }, hint) : null;
    if (hintEl) c.setAttribute('aria-describedby', hintEl.id);
    const box = h('div', { class: 'field check' }, c, h('label', { for: id }, label), hintEl);
    return [c, box];
  };

  // ---- what and where ----
  const fleetSel = h('select', { id: 'campaign-fleet' }, fleets.map((f) => h('option', { value: f.id, selected: f.id === firstFleet }, f.name)));
  const pkgSel = h('select', { id: 'campaign-package' });
  const nameIn = h('input', { id: 'campaign-name', maxlength: '128', autocomplete: 'off', required: true });
  let nameTyped = false;
  nameIn.addEventListener('input', () => { nameTyped = nameIn.value !== ''; });
  const labelIn = h('input', { id: 'campaign-label', autocomplete: 'off', spellcheck: 'false' });
  const fwNotIn = h('input', { id: 'campaign-fw-not', autocomplete: 'off', spellcheck: 'false' });
  let packages = [];
  const suggestName = () => {
    const p = packages.find((x) => x.id === pkgSel.value);
    const f = fleets.find((x) => x.id === fleetSel.value);
    if (!nameTyped && p) nameIn.value = `${p.title} ${p.version} to ${f ? f.name : 'fleet'}`;
  };
  async function loadPackages() {
    const fid = fleetSel.value;
    try {
      packages = await api.get(`/packages${api.qs({ fleet_id: fid })}`);
    } catch (e) {
      packages = [];
      toast(errorText(e), 'error');
    }
    if (fid !== fleetSel.value) return;
    const keep = pkgSel.value || (wanted && wanted.id);
    clear(pkgSel, packages.length ? packages.map((p) => h('option', { value: p.id, selected: p.id === keep, 'data-type': p.type },
      `${p.title} ${p.version} (${p.type}${p.fleet_id ? '' : ', all fleets'})`)) : h('option', { value: '' }, 'No package for this fleet'));
    pkgSel.disabled = !packages.length;
    suggestName();
  }
  fleetSel.addEventListener('change', () => { loadPackages().then(stale); });
  pkgSel.addEventListener('change', suggestName);

  // ---- waves ----
  const wavesList = h('ol', { class: 'waves-editor', id: 'campaign-waves', tabindex: '-1', 'aria-describedby': 'campaign-waves-hint' });
  at.waves = wavesList;
  const wavesErr = h('p', { class: 'field-error', id: 'campaign-waves-error', hidden: true });
  errorOf.set(wavesList, wavesErr);
  function addWave(kind = 'devices', size = '') {
    const n = uid('wave');
    const kindSel = h('select', { id: `${n}-kind`, class: 'wave-kind' }, h('option', { value: 'devices', selected: kind === 'devices' }, 'devices'), h('option', { value: 'percent', selected: kind === 'percent' }, '% of the targets'));
    const sizeIn = num(`${n}-size`, { class: 'wave-size', min: '1', value: size, required: true });
    const li = h('li', { class: 'wave-row' },
      h('label', { for: sizeIn.id, class: 'wave-label' }, 'Wave size'), sizeIn,
      h('label', { for: kindSel.id, class: 'visually-hidden' }, 'Counted in'), kindSel,
      h('button', { type: 'button', class: 'small', onclick: () => { li.remove(); renumber(); stale(); wavesList.focus(); } }, 'Remove'));
    wavesList.append(li);
    renumber();
    return sizeIn;
  }
  function renumber() {
    [...wavesList.children].forEach((li, i) => {
      li.querySelector('.wave-label').textContent = `Wave ${i + 1}`;
      li.querySelector('button').setAttribute('aria-label', `Remove wave ${i + 1}`);
    });
  }
  const wavesBox = h('div', { class: 'field wide' },
    h('span', { class: 'label-spacer', id: 'campaign-waves-label' }, h('strong', {}, 'Waves')),
    wavesList,
    h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'add-wave-devices', onclick: () => { addWave('devices').focus(); stale(); } }, 'Add a wave of N devices'),
      h('button', { type: 'button', id: 'add-wave-percent', onclick: () => { addWave('percent').focus(); stale(); } }, 'Add a wave of P %')),
    h('small', { id: 'campaign-waves-hint' }, 'Each wave\'s own size. Devices left over after the last wave form one more; no wave at all: every device in one wave.'),
    wavesErr);
  wavesList.setAttribute('aria-labelledby', 'campaign-waves-label');

  // ---- rate, gate, threshold ----
  const perMinute = num('campaign-per-minute', { min: '0', value: '0' });
  const successPct = num('campaign-success-pct', { min: '1', max: '100', value: '100' });
  const soak = num('campaign-soak', { min: '0', value: '0' });
  const failurePct = num('campaign-failure-pct', { min: '1', max: '100' });
  const minSample = num('campaign-min-sample', { min: '1', value: '10' });
  const onFailure = h('select', { id: 'campaign-on-failure' }, h('option', { value: 'pause' }, 'Pause the campaign'), h('option', { value: 'abort' }, 'Abort the campaign'));
  const [downloadOnly, downloadOnlyBox] = check('campaign-download-only', 'Download only: devices install when you send the install command', false);
  at.install = downloadOnly;

  // ---- window ----
  const [windowOn, windowOnBox] = check('campaign-window-on', 'Start devices only inside a maintenance window', false);
  const winStart = h('input', { type: 'time', id: 'campaign-window-start', value: '01:00' });
  const winEnd = h('input', { type: 'time', id: 'campaign-window-end', value: '05:00' });
  const winTz = h('input', { id: 'campaign-window-tz', value: Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC', autocomplete: 'off', spellcheck: 'false' });
  const dayBoxes = DAYS.map(([v, l]) => {
    const c = h('input', { type: 'checkbox', id: `campaign-day-${v}`, value: v });
    return [c, h('span', { class: 'day' }, c, h('label', { for: c.id }, l))];
  });
  const windowFields = h('div', { class: 'inline-form window-fields', id: 'campaign-window-fields', hidden: true },
    ffield('window', 'Opens (local time)', winStart), field('Closes', winEnd, 'Before the opening: it crosses midnight'),
    field('Time zone', winTz, 'IANA name, e.g. Europe/Berlin'),
    h('fieldset', { class: 'days' }, h('legend', {}, 'Days (none: every day)'), dayBoxes.map(([, el]) => el)));
  windowOn.addEventListener('change', () => { windowFields.hidden = !windowOn.checked; });

  const [approval, approvalBox] = check('campaign-approval', 'Require the approval of another admin before it starts', false, 'The server may require it for every campaign anyway ([ota] require_approval).');
  at.require_approval = approval;
  const [rollback, rollbackBox] = check('campaign-rollback', 'Roll back when it aborts: a campaign back to the fleet\'s current target for the devices it reached', false);
  at.rollback = rollback;
  const rollbackErr = h('p', { class: 'field-error', id: 'campaign-rollback-error', hidden: true });
  rollbackBox.append(rollbackErr);
  errorOf.set(rollback, rollbackErr);
  const approvalErr = h('p', { class: 'field-error', id: 'campaign-approval-error', hidden: true });
  approvalBox.append(approvalErr);
  errorOf.set(approval, approvalErr);
  const installErr = h('p', { class: 'field-error', id: 'campaign-download-only-error', hidden: true });
  downloadOnlyBox.append(installErr);
  errorOf.set(downloadOnly, installErr);

  // ---- advanced ----
  const startTimeout = num('campaign-start-timeout', { min: '1', placeholder: '86400' });
  const downloadTimeout = num('campaign-download-timeout', { min: '1', placeholder: '3600' });
  const installTimeout = num('campaign-install-timeout', { min: '1', placeholder: '1800' });
  const confirmTimeout = num('campaign-confirm-timeout', { min: '1', placeholder: '900' });
  const retriesFailed = num('campaign-retries-failed', { min: '0', max: '10', placeholder: '2' });
  const retriesTimedOut = num('campaign-retries-timed-out', { min: '0', max: '10', placeholder: '1' });
  const backoff = num('campaign-retry-backoff', { min: '1', placeholder: '60' });
  const rateFactor = h('input', { type: 'number', id: 'campaign-rate-factor', min: '1', max: '10', step: '0.1', placeholder: '1' });
  const rateStep = num('campaign-rate-step', { min: '1', placeholder: '10' });
  const maxPerMinute = num('campaign-max-per-minute', { min: '1', placeholder: '1000' });
  const [reconnect, reconnectBox] = check('campaign-require-reconnect', 'Count a device as updated only once it reports the new version after reconnecting', true);
  at.require_reconnect = reconnect;
  const assignFleet = h('select', { id: 'campaign-assign-fleet' },
    h('option', { value: '' }, 'When it covers the whole fleet (default)'), h('option', { value: 'true' }, 'Yes'), h('option', { value: 'false' }, 'No'));
  const advanced = h('details', { id: 'campaign-advanced', class: 'advanced' },
    h('summary', {}, 'Advanced: deadlines, retries, rate growth, fleet target'),
    h('div', { class: 'inline-form' },
      ffield('start_timeout_secs', 'Come online within (s)', startTimeout, 'After its wave starts; default a day'),
      ffield('download_timeout_secs', 'Download within (s)', downloadTimeout, 'Default 3600'),
      ffield('install_timeout_secs', 'Report UPDATED within (s)', installTimeout, 'After the download; default 1800'),
      ffield('confirm_timeout_secs', 'Confirm the new version within (s)', confirmTimeout, 'After UPDATED, from a new session; default 900'),
      ffield('retries_failed', 'Retries after a failure', retriesFailed, '0 to 10; default 2'),
      ffield('retries_timed_out', 'Retries after a timeout', retriesTimedOut, '0 to 10; default 1'),
      ffield('retry_backoff_secs', 'First retry after (s)', backoff, 'Doubles for each next one; default 60'),
      ffield('rate_factor', 'Rate growth factor', rateFactor, '1 to 10: the rate is multiplied by it…'),
      ffield('rate_step', '…each time this many more updated', rateStep, 'Default 10'),
      ffield('max_per_minute', 'Rate ceiling (devices per minute)', maxPerMinute, 'Default 1000'),
      ffield('assign_fleet', 'Make it the fleet\'s target when it completes', assignFleet),
      reconnectBox));
  const openAdvanced = new Set(['start_timeout_secs', 'download_timeout_secs', 'install_timeout_secs', 'confirm_timeout_secs', 'retries_failed', 'retries_timed_out', 'retry_backoff_secs', 'rate_factor', 'rate_step', 'max_per_minute', 'assign_fleet', 'require_reconnect']);

  // ---- the body ----
  const n = (el) => (el.value.trim() === '' ? undefined : Number(el.value));
  function body() {
    const filter = {};
    if (labelIn.value.trim()) filter.label = labelIn.value.trim();
    if (fwNotIn.value.trim()) filter.firmware_version_not = fwNotIn.value.trim();
    return {
      name: nameIn.value.trim(),
      package_id: pkgSel.value,
      fleet_id: fleetSel.value,
      filter: Object.keys(filter).length ? filter : undefined,
      waves: [...wavesList.querySelectorAll('.wave-row')].map((li) => ({ [li.querySelector('.wave-kind').value]: Number(li.querySelector('.wave-size').value || 0) })),
      per_minute: n(perMinute) ?? 0,
      success_pct: n(successPct),
      soak_secs: n(soak),
      failure_pct: n(failurePct),
      min_sample: n(minSample),
      on_failure: onFailure.value,
      start_timeout_secs: n(startTimeout),
      download_timeout_secs: n(downloadTimeout),
      install_timeout_secs: n(installTimeout),
      confirm_timeout_secs: n(confirmTimeout),
      retries_failed: n(retriesFailed),
      retries_timed_out: n(retriesTimedOut),
      retry_backoff_secs: n(backoff),
      rate_factor: n(rateFactor),
      rate_step: n(rateStep),
      max_per_minute: n(maxPerMinute),
      require_reconnect: reconnect.checked,
      install: downloadOnly.checked ? 'download_only' : 'immediate',
      window: windowOn.checked ? { start: winStart.value, end: winEnd.value, tz: winTz.value.trim() || 'UTC', days: dayBoxes.filter(([c]) => c.checked).map(([c]) => c.value) } : undefined,
      assign_fleet: assignFleet.value ? assignFleet.value === 'true' : undefined,
      rollback: rollback.checked,
      // Unchecked: the server's default ([ota] require_approval) applies.
      require_approval: approval.checked ? true : undefined,
    };
  }

  // ---- refusals at their field ----
  const result = h('div', { id: 'campaign-form-result' });
  function clearErrors() {
    for (const [control, err] of errorOf) {
      control.removeAttribute('aria-invalid');
      err.hidden = true;
      err.textContent = '';
      const ids = (control.getAttribute('aria-describedby') || '').split(' ').filter((x) => x && x !== err.id);
      if (ids.length) control.setAttribute('aria-describedby', ids.join(' ')); else control.removeAttribute('aria-describedby');
    }
    clear(result);
  }
  function showError(e) {
    const name = e.status === 422 || e.code === 'invalid_body' ? refusedField(e) : null;
    const control = name && at[name];
    clear(result, errorBox(e));
    if (control) {
      if (openAdvanced.has(name)) advanced.open = true;
      if (name === 'window') { windowOn.checked = true; windowFields.hidden = false; }
      const err = errorOf.get(control);
      err.textContent = errorText(e);
      err.hidden = false;
      control.setAttribute('aria-invalid', 'true');
      control.setAttribute('aria-describedby', [control.getAttribute('aria-describedby'), err.id].filter(Boolean).join(' '));
      control.focus();
    }
    announce(errorText(e));
  }

  // ---- preview (dry run) ----
  const previewBox = h('div', { id: 'campaign-preview-result', 'aria-live': 'polite' });
  let previewed = null; // the body the shown preview is of
  const createBtn = h('button', { type: 'submit', class: 'primary', id: 'campaign-create', disabled: true, 'aria-describedby': 'campaign-create-hint' }, 'Create campaign');
  const createHint = h('small', { id: 'campaign-create-hint', class: 'muted' }, 'Preview first: Create stores what the preview shows, as a draft; nothing is sent to devices until it is started.');
  function stale() {
    if (!previewed) return;
    if (JSON.stringify(body()) === previewed) return;
    previewBox.dataset.stale = 'yes';
    createBtn.disabled = true;
    if (!previewBox.querySelector('.preview-stale')) previewBox.prepend(h('p', { class: 'notice warn preview-stale', role: 'status' }, 'The form changed since this preview: preview again before creating.'));
  }
  const previewBtn = h('button', { type: 'button', id: 'campaign-preview', onclick: async () => {
    clearErrors();
    const b = body();
    previewBtn.disabled = true;
    previewBox.setAttribute('aria-busy', 'true');
    try {
      const dry = await api.post('/campaigns/dry-run', b);
      previewed = JSON.stringify(b);
      const names = await deviceNames(b.fleet_id);
      clear(previewBox, h('div', { class: 'card preview', 'data-targets': dry.targets, 'data-waves': dry.waves.join(',') },
        h('h3', {}, 'Preview'),
        h('dl', { class: 'facts' },
          h('dt', {}, 'Targets'), h('dd', { id: 'preview-targets' }, plural(dry.targets, 'device')),
          h('dt', {}, 'Already updated'), h('dd', { id: 'preview-already' }, plural(dry.already_updated, 'device'), h('small', { class: 'muted' }, ' (they count as updated at once)')),
          h('dt', {}, 'Waves'), h('dd', {}, dry.waves.length ? h('ul', { id: 'preview-waves', class: 'plain' }, dry.waves.map((w, i) => h('li', { 'data-devices': w }, `Wave ${i + 1}: ${plural(w, 'device')}`))) : '—'),
          h('dt', {}, 'Last device starts'), h('dd', { id: 'preview-last-start' }, dry.estimated_last_start_at ? [fmtTime(dry.estimated_last_start_at), h('small', { class: 'muted' }, ' at the earliest: the rate, soak times and window counted, not the devices\' own download and install time')] : '—'),
          h('dt', {}, 'Notes'), h('dd', {}, dry.notes.length ? h('ul', { id: 'preview-notes', class: 'plain' }, dry.notes.map((x) => h('li', { class: 'preview-note' }, x))) : h('span', { id: 'preview-notes', class: 'muted' }, 'None.'))),
        dry.devices.length ? h('details', { id: 'preview-devices' },
          h('summary', {}, `The first ${plural(dry.devices.length, 'device')} in the order they start`),
          h('ol', {}, dry.devices.map((d) => h('li', {}, names.get(d) || d)))) : null));
      previewBox.dataset.stale = 'no';
      createBtn.disabled = false;
      announce(`Preview: ${plural(dry.targets, 'target')} in ${plural(dry.waves.length, 'wave')}.`);
    } catch (e) {
      previewed = null;
      createBtn.disabled = true;
      clear(previewBox);
      showError(e);
    } finally {
      previewBtn.disabled = false;
      previewBox.setAttribute('aria-busy', 'false');
    }
  } }, 'Preview (dry run)');

  const form = h('form', { id: 'campaign-form', novalidate: true, 'aria-labelledby': 'campaign-form-h' },
    h('h2', { id: 'campaign-form-h', class: 'visually-hidden' }, 'Campaign'),
    h('fieldset', {}, h('legend', {}, 'Package and devices'),
      h('div', { class: 'inline-form' },
        ffield('fleet_id', 'Fleet', fleetSel, 'Fleets where you are an operator'),
        ffield('package_id', 'Package', pkgSel, 'The fleet\'s packages and those for all fleets'),
        ffield('name', 'Name', nameIn, '1 to 128 characters'),
        ffield('filter', 'Only devices labelled', labelIn, 'Optional: the exact label'),
        field('Only devices not on firmware version', fwNotIn, 'Optional: skip those that report it'))),
    h('fieldset', {}, h('legend', {}, 'Waves and rate'),
      wavesBox,
      h('div', { class: 'inline-form' }, ffield('per_minute', 'Devices per minute', perMinute, '0: a whole wave at once'))),
    h('fieldset', {}, h('legend', {}, 'Success gate'),
      h('div', { class: 'inline-form' },
        ffield('success_pct', 'Next wave when updated (%)', successPct, 'Of the wave\'s devices; 1 to 100'),
        ffield('soak_secs', 'Soak time (s)', soak, 'Wait this long after the gate before the next wave'))),
    h('fieldset', {}, h('legend', {}, 'Error threshold'),
      h('div', { class: 'inline-form' },
        ffield('failure_pct', 'Stop when failed (%)', failurePct, 'Of the finished devices; empty: no threshold'),
        ffield('min_sample', 'Once at least this many finished', minSample),
        ffield('on_failure', 'Then', onFailure))),
    h('fieldset', {}, h('legend', {}, 'Install, window, approval, rollback'),
      downloadOnlyBox, windowOnBox, windowFields, approvalBox, rollbackBox),
    advanced,
    h('div', { class: 'actions form-buttons' }, previewBtn, createBtn, createHint),
    result, previewBox);
  form.addEventListener('input', stale);
  form.addEventListener('change', stale);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const b = body();
    if (!previewed || JSON.stringify(b) !== previewed) { stale(); previewBtn.focus(); return; }
    clearErrors();
    createBtn.disabled = true;
    try {
      const c = await api.post('/campaigns', b);
      toast(`Campaign ${c.name} created as a draft.`);
      announce(`Campaign ${c.name} created as a draft.`);
      ctx.go(`/campaigns/${c.id}`);
    } catch (e) {
      createBtn.disabled = false;
      showError(e);
    }
  });

  clear(main, crumbs, heading,
    h('p', { class: 'muted' }, 'A campaign is created as a draft: preview it, create it, then start it from its page (after another admin\'s approval when it needs one).'),
    h('section', { 'aria-labelledby': 'campaign-form-h' }, form));
  await loadPackages();
}
