// One fleet: what it is (name and description, editable by a workspace admin), how its devices
// get onboard — provisioning (self-registration with the fleet's key and secret; the secret
// is shown once, when it is set) and manufacturer CAs (a device whose certificate one of them
// signed joins the fleet on first connect) — its target firmware and software packages (the
// fleet's fw_* and sw_* shared attributes, set and removed through /fleets/{id}/packages), and
// the shared-attribute defaults every device of the fleet gets unless it has its own value.
// Controls the caller's role does not allow are replaced by a note (see roles.js); the server
// decides anyway, and its refusal is shown.

import * as api from '../api.js';
import { h, clear, field, table, onSubmit, toast, announce, timeEl, fmtTime, fmtValue, errorBox, errorText, secretBox, download, sizeEl } from '../dom.js';
import { roleOnFleet, roleOnWorkspace, allows, roleNote, roleText } from '../roles.js';
import { TYPES, shortHex } from './packages.js';

const STRATEGIES = [
  ['allow_create_new_devices', 'Create a device for any new name'],
  ['check_pre_provisioned_devices', 'Only devices created beforehand (pre-provisioned)'],
];
const strategyName = (s) => (STRATEGIES.find(([v]) => v === s) || [s, s])[1];

/** SHA-256 hex as colon-separated pairs, the way `openssl x509 -fingerprint -sha256` prints it. */
const fingerprint = (hex) => (hex.toUpperCase().match(/../g) || []).join(':');

/** JSON when it parses, else the text itself (as the device page's attribute form does). */
function parseValue(raw) {
  try { return JSON.parse(raw); } catch { return raw; }
}

function base64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export async function render(main, ctx) {
  const id = ctx.params[0];
  const base = `/fleets/${id}`;
  const fleet = await api.get(base);
  const workspace = await api.get(`/workspaces/${fleet.workspace_id}`).catch(() => null);
  const role = roleOnFleet(fleet.workspace_id, fleet.id);
  const wsRole = roleOnWorkspace(fleet.workspace_id);
  // Fleet settings and trust are the workspace admin's; other fleet changes the operator's.
  const settings = allows(wsRole, 'admin');
  const operate = allows(role, 'operator');

  const sections = {
    about: h('section', { id: 'fleet-about', 'aria-labelledby': 'about-h' }),
    provisioning: h('section', { id: 'provisioning', 'aria-labelledby': 'provisioning-h' }),
    cas: h('section', { id: 'manufacturer-cas', 'aria-labelledby': 'cas-h' }),
    packages: h('section', { id: 'fleet-packages', 'aria-labelledby': 'packages-h' }),
    defaults: h('section', { id: 'fleet-defaults', 'aria-labelledby': 'defaults-h' }),
  };
  clear(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/fleets' }, 'Workspaces & fleets'), ' / ', workspace ? workspace.name : fleet.workspace_id),
    h('h1', {}, `Fleet ${fleet.name}`),
    h('nav', { class: 'toc', 'aria-label': 'Sections' }, h('ul', {},
      [['about', 'About'], ['provisioning', 'Provisioning'], ['cas', 'Manufacturer CAs'], ['packages', 'Firmware / software'], ['defaults', 'Shared attribute defaults']]
        .map(([k, l]) => h('li', {}, h('a', { href: `#/fleets/${id}`, onclick: (ev) => {
          ev.preventDefault();
          const target = sections[k].querySelector('h2');
          target.setAttribute('tabindex', '-1');
          target.focus();
          target.scrollIntoView({ block: 'start' });
        } }, l))))),
    ...Object.values(sections));

  // ---- about ----
  const yourRole = roleText(role);
  const editForm = settings ? onSubmit(h('form', { class: 'inline-form', id: 'fleet-edit-form', 'aria-labelledby': 'fleet-edit-h' },
    h('h3', { id: 'fleet-edit-h' }, 'Edit fleet'),
    field('Name', h('input', { name: 'name', required: true, id: 'fleet-edit-name', value: fleet.name, autocomplete: 'off' })),
    field('Description', h('input', { name: 'description', id: 'fleet-edit-description', value: fleet.description || '' })),
    h('button', { type: 'submit' }, 'Save')), async (d) => {
    const f = await api.patch(base, { name: String(d.get('name')).trim(), description: String(d.get('description')) });
    toast(`Fleet ${f.name} saved.`);
    announce(`Fleet ${f.name} saved.`);
    ctx.go(`/fleets/${id}`);
  }) : roleNote('admin', 'Editing the fleet', 'workspace');
  clear(sections.about, h('h2', { id: 'about-h' }, 'About'),
    h('dl', { class: 'facts' },
      h('dt', {}, 'ID'), h('dd', {}, h('code', {}, fleet.id)),
      h('dt', {}, 'Workspace'), h('dd', {}, workspace ? workspace.name : fleet.workspace_id),
      h('dt', {}, 'Description'), h('dd', {}, fleet.description || '—'),
      h('dt', {}, 'Created'), h('dd', {}, fmtTime(fleet.created_at)),
      yourRole ? [h('dt', {}, 'Your role'), h('dd', { id: 'fleet-role' }, yourRole)] : null),
    h('div', { class: 'actions' },
      h('a', { href: `#/devices?fleet_id=${id}`, class: 'button', id: 'fleet-devices-link' }, 'Devices of this fleet'),
      h('a', { href: `#/jobs?fleet_id=${id}`, class: 'button' }, 'Jobs of this fleet')),
    editForm);

  // ---- provisioning ----
  const provHead = () => [h('h2', { id: 'provisioning-h' }, 'Provisioning (self-registration)'),
    h('p', { class: 'muted' }, 'A device that knows the fleet\'s provisioning key and secret registers itself and receives its credentials: ThingsBoard\'s provisioning request over MQTT (username "provision") or HTTP (POST /api/v1/provision).')];
  const provSecret = h('div', { id: 'provisioning-secret' });
  async function renderProvisioning() {
    if (!settings) {
      clear(sections.provisioning, provHead(), roleNote('admin', 'Seeing and changing provisioning', 'workspace'));
      return;
    }
    let cur = null;
    try {
      cur = await api.get(`${base}/provisioning`);
    } catch (e) {
      // 404 "provisioning key not found": provisioning is off.
      if (!(e.status === 404 && e.code === 'not_found' && /provisioning/i.test(e.message))) {
        clear(sections.provisioning, provHead(), errorBox(e));
        return;
      }
    }
    if (!ctx.current()) return;
    const form = onSubmit(h('form', { class: 'inline-form', id: 'provisioning-form', 'aria-labelledby': 'prov-form-h' },
      h('h3', { id: 'prov-form-h' }, cur ? 'Change provisioning' : 'Enable provisioning'),
      field('Strategy', h('select', { name: 'strategy', id: 'provisioning-strategy' },
        STRATEGIES.map(([v, l]) => h('option', { value: v, selected: cur ? cur.strategy === v : v === STRATEGIES[0][0] }, l)))),
      field('Provision key', h('input', { name: 'key', id: 'provisioning-key', value: cur ? cur.key : '', autocomplete: 'off', spellcheck: 'false', minlength: '8', maxlength: '256' }),
        'What devices send as provisionDeviceKey; 8 to 256 characters. Empty: one is generated.'),
      field('Provision secret', h('input', { name: 'secret', id: 'provisioning-secret-input', autocomplete: 'off', spellcheck: 'false', minlength: '8', maxlength: '256' }),
        'Empty: one is generated. Saving always sets a new secret: Corral keeps only its hash.'),
      h('button', { type: 'submit', class: 'primary' }, cur ? 'Save and set a new secret' : 'Enable provisioning')), async (d) => {
      const body = { strategy: d.get('strategy') };
      const key = String(d.get('key') || '').trim();
      const secret = String(d.get('secret') || '').trim();
      if (key) body.key = key;
      if (secret) body.secret = secret;
      if (cur && !window.confirm('Set a new provisioning secret? Devices that have not provisioned yet will need the new one (provisioned devices keep their credentials).')) return;
      const r = await api.put(`${base}/provisioning`, body);
      // Shown this once: never stored in the page beyond this box, never read back.
      clear(provSecret,
        h('p', {}, h('strong', {}, 'Provisioning enabled. '), 'Give devices the key ', h('code', { id: 'provisioning-new-key' }, r.key), ' and the secret below.'),
        secretBox('Provisioning secret', r.secret),
        h('p', { class: 'muted' }, 'Copy it now: Corral keeps only a hash of it and cannot show it again. A lost secret can only be replaced.'),
        h('button', { type: 'button', onclick: () => {
          clear(provSecret);
          const h2 = sections.provisioning.querySelector('h2');
          h2.setAttribute('tabindex', '-1');
          h2.focus();
        } }, 'I have copied it: hide it'));
      announce('Provisioning saved. Copy the secret now: it is shown only once.');
      await renderProvisioning();
      provSecret.querySelector('input')?.focus();
    });
    const off = cur ? h('button', { type: 'button', class: 'danger', id: 'provisioning-disable', onclick: async () => {
      if (!window.confirm('Disable provisioning? Devices can no longer register themselves with this key; provisioned devices keep working.')) return;
      try {
        await api.del(`${base}/provisioning`);
        clear(provSecret);
        announce('Provisioning disabled.');
        renderProvisioning();
      } catch (e) { toast(errorText(e), 'error'); }
    } }, 'Disable provisioning') : null;
    clear(sections.provisioning, provHead(),
      h('dl', { class: 'facts', id: 'provisioning-state', 'data-enabled': cur ? 'yes' : 'no' },
        h('dt', {}, 'Status'), h('dd', {}, cur ? h('span', { class: 'badge active' }, 'enabled') : h('span', { class: 'badge disabled' }, 'off')),
        cur ? [
          h('dt', {}, 'Strategy'), h('dd', { id: 'provisioning-strategy-now' }, strategyName(cur.strategy)),
          h('dt', {}, 'Provision key'), h('dd', {}, h('code', { id: 'provisioning-key-now' }, cur.key)),
          h('dt', {}, 'Secret'), h('dd', {}, 'set ', timeEl(cur.created_at), ' (not shown: only its hash is kept)'),
        ] : null),
      provSecret, form, off ? h('div', { class: 'actions' }, off) : null);
  }

  // ---- manufacturer CAs ----
  async function renderCas() {
    const head = [h('h2', { id: 'cas-h' }, 'Manufacturer CAs'),
      h('p', { class: 'muted' }, 'A device presenting a certificate signed by one of these CAs joins this fleet on its first connect, named from the certificate\'s CN.')];
    let cas;
    try { cas = await api.get(`${base}/cas`); } catch (e) { clear(sections.cas, head, errorBox(e)); return; }
    if (!ctx.current()) return;
    const now = Date.now();
    const rows = cas.map((c) => h('tr', { 'data-ca-id': c.id },
      h('th', { scope: 'row' }, c.name),
      h('td', {}, c.subject),
      h('td', {}, h('code', { class: 'fingerprint', title: 'SHA-256 of the certificate' }, fingerprint(c.sha256))),
      h('td', {}, fmtTime(c.not_after), c.not_after <= now ? [' ', h('span', { class: 'badge expired' }, 'expired')] : null),
      h('td', {}, fmtTime(c.created_at)),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small', 'aria-label': `Download CA ${c.name}`, onclick: () => download(`${c.name.replace(/[^\w.-]+/g, '_') || 'ca'}.pem`, c.certificate_pem) }, 'Download'),
        settings ? h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete CA ${c.name}`, onclick: async () => {
          if (!window.confirm(`Delete the manufacturer CA ${c.name}? Devices it signed can no longer join this fleet by themselves (devices already created keep their credentials).`)) return;
          try { await api.del(`${base}/cas/${c.id}`); announce(`CA ${c.name} deleted.`); renderCas(); } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Delete') : null)));
    let form;
    if (settings) {
      const pem = h('textarea', { name: 'certificate_pem', id: 'ca-pem', rows: '6', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
      const file = h('input', { type: 'file', id: 'ca-file', accept: '.pem,.crt,.cer,.der' });
      file.addEventListener('change', async () => {
        const f = file.files && file.files[0];
        if (!f) return;
        if (f.size > 65536) { toast('That file is too large for a certificate.', 'error'); return; }
        const bytes = new Uint8Array(await f.arrayBuffer());
        const text = new TextDecoder().decode(bytes);
        // PEM as it is; a binary (DER) file as base64, which the server accepts too.
        pem.value = text.includes('-----BEGIN') ? text : base64(bytes);
        announce(`${f.name} read.`);
      });
      form = onSubmit(h('form', { class: 'inline-form', id: 'ca-form', 'aria-labelledby': 'ca-new-h' },
        h('h3', { id: 'ca-new-h' }, 'Add a manufacturer CA'),
        field('Name', h('input', { name: 'name', id: 'ca-name', autocomplete: 'off' }), 'Optional; the certificate\'s subject when empty'),
        field('Certificate file', file, 'PEM or DER; read in this browser, into the box below'),
        h('div', { class: 'field wide' }, h('label', { for: 'ca-pem' }, 'CA certificate (PEM)'), pem),
        h('button', { type: 'submit', class: 'primary' }, 'Add CA')), async (d) => {
        const text = String(d.get('certificate_pem') || '').trim();
        if (!text) throw new Error('Paste the CA certificate or choose its file.');
        const body = { certificate_pem: text };
        if (String(d.get('name') || '').trim()) body.name = String(d.get('name')).trim();
        const ca = await api.post(`${base}/cas`, body);
        announce(`CA ${ca.name} added.`);
        toast(`CA ${ca.name} added.`);
        await renderCas();
      });
    } else {
      form = roleNote('admin', 'Adding and deleting manufacturer CAs', 'workspace');
    }
    clear(sections.cas, head,
      table('Manufacturer CAs', ['Name', 'Subject', 'SHA-256 fingerprint', 'Valid until', 'Added', ''], rows, { hideCaption: true, empty: 'No manufacturer CAs.' }),
      form);
  }

  // ---- firmware / software ----
  // The target of each type is what the fleet's shared attributes say (the five fw_* or sw_*
  // keys an assignment sets); the package of the library it names, when there is one.
  async function renderPackages() {
    const head = [h('h2', { id: 'packages-h' }, 'Firmware / software'),
      h('p', { class: 'muted' }, 'The package every device of this fleet is to run. Assigning one sets the fleet\'s fw_* (or sw_*) shared attributes and pushes them to its connected devices, which then download it over the ThingsBoard protocol; a device with its own value of a key keeps it.')];
    let attrs;
    let pkgs;
    try {
      [attrs, pkgs] = await Promise.all([api.get(`${base}/attributes/shared`), api.get(`/packages${api.qs({ fleet_id: id })}`)]);
    } catch (e) { clear(sections.packages, head, errorBox(e)); return; }
    if (!ctx.current()) return;
    attrs = attrs || {};
    const targets = TYPES.map(([kind, label]) => {
      const prefix = kind === 'firmware' ? 'fw' : 'sw';
      const attr = (k) => attrs[`${prefix}_${k}`];
      const value = (k) => (attr(k) ? attr(k).value : undefined);
      const title = value('title');
      const version = value('version');
      const assigned = title !== undefined && title !== null;
      const pkg = assigned ? pkgs.find((p) => p.type === kind && p.title === title && p.version === String(version)) : null;
      const choices = pkgs.filter((p) => p.type === kind);
      const now = assigned ? h('dl', { class: 'facts' },
        h('dt', {}, 'Package'), h('dd', { class: 'target-name' }, pkg ? h('a', { href: `#/packages?id=${pkg.id}` }, `${title} ${version}`) : `${title} ${version ?? ''}`,
          pkg ? null : h('small', { class: 'muted' }, ' (not a package in the library)')),
        value('size') !== undefined ? [h('dt', {}, 'Size'), h('dd', {}, sizeEl(value('size')))] : null,
        value('checksum') ? [h('dt', {}, 'Checksum'), h('dd', {}, `${value('checksum_algorithm') || ''} `, shortHex(String(value('checksum')), 'checksum'))] : null,
        h('dt', {}, 'Assigned'), h('dd', {}, timeEl(attr('title').ts)))
        : h('p', { class: 'muted target-none' }, `No ${kind} assigned.`);
      let controls = null;
      if (operate && !choices.length) {
        controls = h('p', { class: 'muted' }, `No ${kind} package for this fleet yet: `, h('a', { href: `#/packages?fleet_id=${id}` }, 'upload one'), '.');
      } else if (operate) {
        const sel = h('select', { name: 'package_id', id: `assign-${kind}` }, choices.map((p) => h('option', { value: p.id, selected: pkg && p.id === pkg.id },
          `${p.title} ${p.version}${p.fleet_id ? '' : ' (all fleets)'}`)));
        controls = onSubmit(h('form', { class: 'inline-form', id: `assign-${kind}-form`, 'aria-label': `Assign ${kind}` },
          field(`${label} package`, sel),
          h('button', { type: 'submit', class: 'primary' }, assigned ? 'Assign instead' : 'Assign')), async (d) => {
          const p = choices.find((x) => x.id === d.get('package_id'));
          if (!p) return;
          if (!window.confirm(`Make ${p.title} ${p.version} the ${kind} of every device of fleet ${fleet.name}? Connected devices are told at once and start downloading it.`)) return;
          await api.put(`${base}/packages`, { package_id: p.id });
          toast(`${p.title} ${p.version} assigned to fleet ${fleet.name}.`);
          announce(`${p.title} ${p.version} is now the fleet's ${kind}.`);
          await Promise.all([renderPackages(), renderDefaults()]);
        });
      }
      const unassign = operate && assigned ? h('button', { type: 'button', class: 'danger', id: `unassign-${kind}`, onclick: async () => {
        if (!window.confirm(`Unassign the ${kind} of fleet ${fleet.name}? Its devices are told that the ${prefix}_* attributes are gone.`)) return;
        try {
          await api.del(`${base}/packages${api.qs({ type: kind })}`);
          toast(`The ${kind} of fleet ${fleet.name} was unassigned.`);
          announce(`The fleet's ${kind} was unassigned.`);
          await Promise.all([renderPackages(), renderDefaults()]);
        } catch (e) { toast(errorText(e), 'error'); }
      } }, `Unassign ${kind}`) : null;
      return h('div', { class: 'card target', id: `fleet-target-${kind}`, 'data-assigned': assigned ? 'yes' : 'no', 'data-title': assigned ? String(title) : null, 'data-version': assigned ? String(version) : null },
        h('h3', {}, label), now, controls, unassign ? h('div', { class: 'actions' }, unassign) : null);
    });
    clear(sections.packages, head, h('div', { class: 'targets' }, targets),
      operate ? null : roleNote('operator', 'Assigning and unassigning packages'));
  }

  // ---- shared attribute defaults ----
  async function renderDefaults() {
    const head = [h('h2', { id: 'defaults-h' }, 'Shared attribute defaults'),
      h('p', { class: 'muted' }, 'The desired configuration every device of this fleet gets, unless the device has its own value for the key. Changes are pushed to connected devices.')];
    let m;
    try { m = await api.get(`${base}/attributes/shared`); } catch (e) { clear(sections.defaults, head, errorBox(e)); return; }
    if (!ctx.current()) return;
    const keyIn = h('input', { name: 'key', id: 'default-key', required: true, autocomplete: 'off', spellcheck: 'false' });
    const valueIn = h('textarea', { name: 'value', id: 'default-value', rows: '3', required: true, spellcheck: 'false', 'aria-describedby': 'default-value-hint' });
    const rows = Object.entries(m || {}).map(([k, v]) => h('tr', { 'data-key': k },
      h('th', { scope: 'row' }, k),
      h('td', {}, h('code', {}, fmtValue(v.value))),
      h('td', {}, timeEl(v.ts)),
      operate ? h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small', 'aria-label': `Edit default ${k}`, onclick: () => {
          keyIn.value = k;
          valueIn.value = JSON.stringify(v.value, null, 2);
          valueIn.focus();
        } }, 'Edit'),
        h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete default ${k}`, onclick: async () => {
          if (!window.confirm(`Delete the fleet default ${k}? Devices without their own value for it lose it.`)) return;
          try { await api.del(`${base}/attributes/shared${api.qs({ keys: k })}`); announce(`Default ${k} deleted.`); renderDefaults(); } catch (e) { toast(errorText(e), 'error'); }
        } }, 'Delete')) : null));
    const form = operate ? onSubmit(h('form', { class: 'inline-form', id: 'defaults-form', 'aria-labelledby': 'defaults-new-h' },
      h('h3', { id: 'defaults-new-h' }, 'Set a default'),
      field('Key', keyIn),
      h('div', { class: 'field wide' }, h('label', { for: 'default-value' }, 'Value'), valueIn,
        h('small', { id: 'default-value-hint' }, 'JSON (42, true, "text", {…}) or plain text')),
      h('button', { type: 'submit', class: 'primary' }, 'Set default')), async (d) => {
      const key = String(d.get('key')).trim();
      await api.put(`${base}/attributes/shared`, { [key]: parseValue(String(d.get('value'))) });
      announce(`Default ${key} set; pushed to the fleet's devices.`);
      await renderDefaults();
    }) : roleNote('operator', 'Changing the defaults');
    clear(sections.defaults, head,
      table('Shared attribute defaults', ['Key', 'Value', 'Updated', operate ? h('span', { class: 'visually-hidden' }, 'Actions') : null].filter(Boolean), rows,
        { hideCaption: true, empty: 'No defaults.' }),
      form);
  }

  await Promise.all([renderProvisioning(), renderCas(), renderPackages(), renderDefaults()]);
}
