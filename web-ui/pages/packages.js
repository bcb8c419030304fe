// Packages: the firmware and software library — the list (filtered by type and fleet on the
// server; each row expands to its details: file name, full SHA-256 and device checksum, who
// uploaded it, the server's warnings), download and delete (refused with the server's reason
// while a fleet targets the package), and the upload form, which sends the chosen file itself
// as the request body with a progress bar. A package for one fleet is managed by that fleet's
// admins, one for every fleet by server admins: other callers see a note instead of those
// controls (roles.js). A fleet's target package is set on the fleet page (fleet.js); "Roll out"
// opens a new OTA campaign of the package (campaign-new.js) for operators of a fleet it fits.

import * as api from '../api.js';
import { h, clear, field, table, toast, announce, fmtTime, fmtBytes, sizeEl, errorBox, errorText } from '../dom.js';
import { allFleets } from './fleets.js';
import { canOnFleet, serverAdmin, roleNote } from '../roles.js';

export const TYPES = [['firmware', 'Firmware'], ['software', 'Software']];
const ALGORITHMS = ['SHA256', 'SHA384', 'SHA512', 'MD5', 'CRC32', 'MURMUR3_32', 'MURMUR3_128'];
/** Checksums the ThingsBoard SDK verifies unreliably (docs/ota.md). */
const UNRELIABLE = new Set(['CRC32', 'MURMUR3_32', 'MURMUR3_128']);
/** What the server accepts as a file name (see NewPackage in src/ota/packages.rs). */
const FILE_NAME_OK = /^[^/\\"\u0000-\u001f\u007f-\u009f]{1,255}$/;

/** A long hex value as its first and last 8 digits; the whole value in its title. */
export function shortHex(hex, label) {
  const text = hex.length > 20 ? `${hex.slice(0, 8)}…${hex.slice(-8)}` : hex;
  return h('code', { class: 'checksum', title: hex, 'aria-label': label ? `${label} ${hex}` : null }, text);
}

export async function render(main, ctx) {
  const fleets = await allFleets();
  const fleetById = new Map(fleets.map((f) => [f.id, f]));
  const admin = serverAdmin();
  // Fleets whose packages the caller manages (upload and delete).
  const ownFleets = fleets.filter((f) => canOnFleet(f.workspace_id, f.id, 'admin'));
  // Whether the caller may start a campaign of the package: operator of its fleet, or of any
  // fleet for a package of every fleet.
  const rollsOut = (p) => (p.fleet_id
    ? (!fleetById.get(p.fleet_id) || canOnFleet(fleetById.get(p.fleet_id).workspace_id, p.fleet_id, 'operator'))
    : fleets.some((f) => canOnFleet(f.workspace_id, f.id, 'operator')));
  const manages = (p) => {
    if (!p.fleet_id) return admin;
    const f = fleetById.get(p.fleet_id);
    return !f || canOnFleet(f.workspace_id, f.id, 'admin');
  };
  const fleetCell = (fid) => {
    if (!fid) return h('span', { class: 'muted' }, 'all fleets');
    const f = fleetById.get(fid);
    return f ? h('a', { href: `#/fleets/${f.id}` }, f.name) : h('code', {}, fid);
  };
  const state = {
    type: ctx.query.type || '',
    fleet_id: ctx.query.fleet_id || '',
    // Packages whose details are shown.
    open: new Set(ctx.query.id ? [ctx.query.id] : []),
  };

  // ---- filters ----
  const typeSel = h('select', { id: 'packages-type' },
    [['', 'Any type'], ...TYPES].map(([v, l]) => h('option', { value: v, selected: v === state.type }, l)));
  const fleetSel = h('select', { id: 'packages-fleet' }, h('option', { value: '' }, 'Any fleet'),
    fleets.map((f) => h('option', { value: f.id, selected: f.id === state.fleet_id }, f.name)));
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter packages' },
    field('Type', typeSel), field('Fleet', fleetSel, 'Its packages and those for all fleets'));
  filters.addEventListener('submit', (ev) => ev.preventDefault());
  const listBox = h('div', { id: 'packages-list', 'aria-busy': 'true' });
  const count = h('p', { id: 'packages-count', class: 'muted', 'aria-live': 'polite' });

  // ---- the list ----
  let loadSeq = 0;
  async function load() {
    const seq = ++loadSeq;
    listBox.setAttribute('aria-busy', 'true');
    let list;
    try {
      list = await api.get(`/packages${api.qs({ type: state.type, fleet_id: state.fleet_id })}`);
    } catch (e) {
      if (seq === loadSeq) clear(listBox, errorBox(e));
      return;
    }
    if (seq !== loadSeq || !ctx.current()) return;
    const rows = list.flatMap((p) => packageRows(p));
    clear(listBox, table('Packages', ['Title', 'Version', 'Type', 'Fleet', 'Size', 'Checksum', 'Created', h('span', { class: 'visually-hidden' }, 'Actions')], rows,
      { hideCaption: true, class: 'packages', empty: state.type || state.fleet_id ? 'No package matches.' : 'No packages yet.' }));
    listBox.setAttribute('aria-busy', 'false');
    count.textContent = `${list.length} package${list.length === 1 ? '' : 's'}`;
  }

  function packageRows(p) {
    const detailsId = `package-details-${p.id}`;
    const message = h('div', { class: 'package-message' });
    const details = h('tr', { class: 'package-details', id: detailsId, 'data-package-id': p.id, hidden: !state.open.has(p.id) },
      h('td', { colspan: '8' },
        message,
        h('dl', { class: 'facts' },
          h('dt', {}, 'ID'), h('dd', {}, h('code', {}, p.id)),
          h('dt', {}, 'File name'), h('dd', {}, h('code', {}, p.file_name)),
          h('dt', {}, 'Size'), h('dd', {}, `${fmtBytes(p.size)} (${p.size.toLocaleString()} bytes)`),
          h('dt', {}, 'SHA-256'), h('dd', {}, h('code', { class: 'fingerprint package-sha256' }, p.sha256)),
          h('dt', {}, 'Device checksum'), h('dd', {}, `${p.checksum_algorithm} `, h('code', { class: 'fingerprint package-checksum' }, p.checksum)),
          h('dt', {}, 'Uploaded'), h('dd', {}, `${fmtTime(p.created_at)} by ${p.created_by}`)),
        (p.warnings || []).map((w) => h('p', { class: 'notice warn package-warning' }, h('strong', {}, 'Warning: '), w))));
    const toggle = h('button', { type: 'button', class: 'link', 'aria-expanded': String(state.open.has(p.id)), 'aria-controls': detailsId,
      'aria-label': `Details of ${p.title} ${p.version}`, onclick: () => {
        const show = details.hidden;
        details.hidden = !show;
        toggle.setAttribute('aria-expanded', String(show));
        if (show) state.open.add(p.id); else state.open.delete(p.id);
      } }, p.title);
    const row = h('tr', { 'data-package-id': p.id, 'data-type': p.type, 'data-title': p.title, 'data-version': p.version },
      h('th', { scope: 'row' }, toggle),
      h('td', {}, p.version),
      h('td', {}, p.type),
      h('td', {}, fleetCell(p.fleet_id)),
      h('td', {}, sizeEl(p.size)),
      h('td', {}, h('span', { class: 'muted' }, p.checksum_algorithm), ' ', shortHex(p.checksum, `${p.checksum_algorithm} checksum`),
        p.warnings && p.warnings.length ? [' ', h('span', { class: 'badge expiring', title: p.warnings.join(' ') }, 'warning')] : null),
      h('td', {}, fmtTime(p.created_at)),
      h('td', { class: 'actions' },
        h('a', { href: `/api/v1/packages/${p.id}/file`, class: 'button small', download: p.file_name, 'aria-label': `Download ${p.title} ${p.version}`, onclick: async (ev) => {
          // With a session cookie the link itself downloads; an API key must travel in a header.
          if (!api.session.apiKey) return;
          ev.preventDefault();
          try { await api.downloadFile(`/packages/${p.id}/file`, p.file_name); } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Download'),
        rollsOut(p) ? h('a', { href: `#/campaigns/new${api.qs({ package_id: p.id })}`, class: 'button small', 'aria-label': `Roll out ${p.title} ${p.version}` }, 'Roll out') : null,
        manages(p) ? h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${p.title} ${p.version}`, onclick: async () => {
          if (!window.confirm(`Delete the ${p.type} package ${p.title} ${p.version}? Its file goes too unless another package has the same bytes.`)) return;
          try {
            await api.del(`/packages/${p.id}`);
            state.open.delete(p.id);
            toast(`Package ${p.title} ${p.version} deleted.`);
            announce(`Package ${p.title} ${p.version} deleted.`);
            await load();
          } catch (e) {
            // A fleet targets it (409): say which, with the way to its page.
            const fid = e.status === 409 ? (/fleet ([0-9a-fA-F-]{36})/.exec(e.message) || [])[1] : null;
            const f = fid && fleetById.get(fid);
            clear(message, h('div', { class: 'notice error', role: 'alert' }, errorText(e),
              f ? [' ', h('a', { href: `#/fleets/${f.id}`, class: 'package-fleet-link' }, `Unassign it on the page of fleet ${f.name}.`)] : null));
            details.hidden = false;
            toggle.setAttribute('aria-expanded', 'true');
            state.open.add(p.id);
            toast(errorText(e), 'error');
          }
        } }, 'Delete') : null));
    return [row, details];
  }

  const syncHash = () => {
    const q = new URLSearchParams(Object.entries({ type: state.type, fleet_id: state.fleet_id }).filter(([, v]) => v)).toString();
    history.replaceState(null, '', `#/packages${q ? `?${q}` : ''}`);
  };
  const refilter = () => {
    if (!ctx.current()) return;
    state.type = typeSel.value;
    state.fleet_id = fleetSel.value;
    syncHash();
    load();
  };
  typeSel.addEventListener('change', refilter);
  fleetSel.addEventListener('change', refilter);

  // ---- upload ----
  const uploadBox = h('div', { id: 'package-upload' });
  if (admin || ownFleets.length) {
    uploadBox.append(uploadForm());
  } else {
    uploadBox.append(roleNote('admin', 'Uploading and deleting packages'));
  }

  function uploadForm() {
    const file = h('input', { type: 'file', name: 'file', id: 'package-file', required: true });
    const title = h('input', { name: 'title', id: 'package-title', required: true, maxlength: '128', autocomplete: 'off', spellcheck: 'false' });
    const version = h('input', { name: 'version', id: 'package-version', required: true, maxlength: '128', autocomplete: 'off', spellcheck: 'false' });
    const type = h('select', { name: 'type', id: 'package-type' }, TYPES.map(([v, l]) => h('option', { value: v, selected: v === (state.type || 'firmware') }, l)));
    const fleet = h('select', { name: 'fleet_id', id: 'package-fleet' },
      admin ? h('option', { value: '' }, 'All fleets') : null,
      ownFleets.map((f) => h('option', { value: f.id, selected: f.id === state.fleet_id }, f.name)));
    const algorithm = h('select', { name: 'checksum_algorithm', id: 'package-checksum' },
      ALGORITHMS.map((a) => h('option', { value: a, selected: a === 'SHA256' }, UNRELIABLE.has(a) ? `${a} (unreliable)` : a)));
    const fileName = h('input', { name: 'file_name', id: 'package-file-name', maxlength: '255', autocomplete: 'off', spellcheck: 'false' });
    let fileNameTyped = false;
    fileName.addEventListener('input', () => { fileNameTyped = fileName.value !== ''; });
    file.addEventListener('change', () => {
      const f = file.files && file.files[0];
      // The picked file's name is what devices see, unless one was typed.
      if (f && !fileNameTyped) fileName.value = FILE_NAME_OK.test(f.name) ? f.name : '';
    });

    const progress = h('progress', { id: 'upload-progress', max: '1', value: '0', 'aria-labelledby': 'upload-progress-label' });
    const progressText = h('span', { id: 'upload-progress-text' });
    const progressBox = h('div', { id: 'upload-progress-box', class: 'upload-progress', hidden: true },
      h('span', { id: 'upload-progress-label' }, 'Upload progress'), progress, progressText);
    const result = h('div', { id: 'upload-result' });
    const submit = h('button', { type: 'submit', class: 'primary' }, 'Upload');
    const cancel = h('button', { type: 'button', id: 'upload-cancel', hidden: true }, 'Cancel upload');
    let ctl = null;
    cancel.addEventListener('click', () => ctl && ctl.abort());

    const form = h('form', { class: 'inline-form', id: 'package-upload-form', 'aria-labelledby': 'package-upload-h' },
      field('File', file),
      field('Title', title, 'fw_title: 1 to 128 characters'),
      field('Version', version, 'fw_version, kept as the text given'),
      field('Type', type),
      field('Fleet', fleet, admin ? 'All fleets: for server administrators' : 'Fleets where you are an admin'),
      field('Checksum algorithm', algorithm, 'SHA256 unless devices need another. CRC32 and MURMUR3 are unreliable with the ThingsBoard SDK: it fails about 1 image in 256 with them.'),
      field('File name devices see', fileName, 'The chosen file\'s name; empty: <title>-<version>.bin'),
      submit, cancel, progressBox, h('div', { class: 'field wide' }, result));

    const show = (sent, total) => {
      progress.max = Math.max(total, 1);
      progress.value = Math.min(sent, total);
      const pct = total ? Math.floor((sent / total) * 100) : 100;
      progressText.textContent = `${fmtBytes(sent)} of ${fmtBytes(total)} (${pct}%)`;
      if (sent >= total && progressBox.dataset.state === 'sending') {
        progressBox.dataset.state = 'storing';
        progressText.textContent += ' — sent; the server is storing it…';
      }
    };

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const f = file.files && file.files[0];
      if (!f) { clear(result, errorBox(new Error('Choose the package file.'))); file.focus(); return; }
      for (const el of [title, version, fileName]) el.removeAttribute('aria-invalid');
      const query = {
        title: title.value,
        version: version.value,
        type: type.value,
        fleet_id: fleet.value,
        checksum_algorithm: algorithm.value,
        file_name: fileName.value.trim(),
      };
      ctl = new AbortController();
      submit.disabled = true;
      cancel.hidden = false;
      clear(result);
      progressBox.hidden = false;
      progressBox.dataset.state = 'sending';
      show(0, f.size);
      announce(`Uploading ${f.name}.`);
      try {
        const p = await api.upload(`/packages${api.qs(query)}`, f, { onProgress: show, signal: ctl.signal });
        progressBox.dataset.state = 'done';
        progress.value = progress.max;
        progressText.textContent = `${fmtBytes(p.size)} of ${fmtBytes(p.size)} (100%) — stored`;
        const done = `Package ${p.title} ${p.version} uploaded (${fmtBytes(p.size)}).`;
        clear(result,
          h('div', { class: 'notice', role: 'status', id: 'upload-done' }, h('strong', {}, done), ' SHA-256 ', shortHex(p.sha256, 'SHA-256')),
          (p.warnings || []).map((w) => h('div', { class: 'notice warn upload-warning', role: 'alert' }, h('strong', {}, 'The server warns: '), w)));
        announce(done);
        if (!ctx.current()) { toast(done); return; }
        form.reset();
        fileNameTyped = false;
        await load();
      } catch (e) {
        progressBox.dataset.state = 'failed';
        if (e.name === 'AbortError') {
          progressText.textContent = 'cancelled';
          clear(result, h('p', { class: 'notice', role: 'status' }, 'Upload cancelled; nothing was stored.'));
          return;
        }
        clear(result, errorBox(e), uploadHint(e));
        // A refused field: mark it, and go to it.
        const bad = e.code === 'invalid_field' && { title, version, file_name: fileName, checksum_algorithm: algorithm }[(e.message.split(':')[0] || '').trim()];
        if (bad) { bad.setAttribute('aria-invalid', 'true'); bad.focus(); }
        if (!ctx.current()) toast(errorText(e), 'error');
      } finally {
        submit.disabled = false;
        cancel.hidden = true;
        ctl = null;
      }
    });
    return form;
  }

  /** What the user can do about a refused upload, where the error alone does not say. */
  function uploadHint(e) {
    const text = e.status === 413 ? 'The file is over this server\'s package size cap ([ota] max_package_mb, 256 MiB by default).'
      : e.status === 0 ? 'A file over the server\'s package size cap ([ota] max_package_mb), or one that does not arrive within http.body_timeout_secs, ends this way.'
        : e.code === 'name_taken' ? 'Title and version are unique per type: give a new version.'
          : null;
    return text ? h('p', { class: 'muted upload-hint' }, text) : null;
  }

  clear(main, h('h1', {}, 'Packages'),
    h('p', { class: 'muted' }, 'Firmware and software files for devices. A fleet\'s target package is set on the fleet\'s page; devices then fetch it over the ThingsBoard protocol.'),
    h('section', { 'aria-labelledby': 'packages-h' }, h('h2', { id: 'packages-h' }, 'Library'), filters, count, listBox),
    h('section', { 'aria-labelledby': 'package-upload-h', id: 'package-upload-section' }, h('h2', { id: 'package-upload-h' }, 'Upload a package'), uploadBox));
  await load();
}
