// One dashboard: its widgets on a four-column grid under a shared time window (a window
// length, zoom in and out, earlier and later, back to live), updated live from the event
// stream of the dashboard's fleet or workspace (telemetry, conditions, connections; redrawn at
// most every 2 s, maps at most every 30 s) and every 30 s while live; and, for operators, its
// editor: name, window, widgets added, changed in place, moved and removed, saved as a whole
// with the server's refusal shown at the form (it names the widget and field). Devices are
// chosen by a search the server answers (picker.js), and only the devices the widgets name
// are read for their names, so neither depends on how many devices the scope holds. Every
// action works from the keyboard, and focus lands where the action leaves the reader.

import * as api from '../api.js';
import { h, clear, field, toast, announce, errorText, select, throttle } from '../dom.js';
import { canOnFleet, canOnWorkspace, roleNote } from '../roles.js';
import { KINDS, draw, scopeQuery } from '../widgets.js';
import { devicePicker } from '../picker.js';
import { WINDOWS } from './dashboards.js';

const MIN_SPAN = 5 * 60000;
const MAX_SPAN = 366 * 86400000;
// Live data redraws at most this often; a map (which reads every device of the scope) at most
// every MAP_EVERY.
const LIVE_EVERY = 2000;
const MAP_EVERY = 30000;

/** The devices a widget names: a chart's, or a value's or gauge's one. */
function widgetDevices(w) {
  if (w.kind === 'chart') return w.devices || [];
  return w.device_id ? [w.device_id] : [];
}

/**
 * Reads the name of each device of `ids` not in `names` yet, in parallel, into `names`; a
 * device the server does not find (deleted) is recorded as null and shows its short id.
 */
async function loadNames(names, ids) {
  const todo = [...new Set(ids)].filter((x) => !(x in names));
  await Promise.all(todo.map((x) => api.get(`/devices/${x}`).then((dev) => { names[x] = dev.name; }, (e) => {
    if (e.status === 404) names[x] = null;
  })));
}

function fmtSpan(ms) {
  const m = Math.round(ms / 60000);
  if (m < 120) return `${m} min`;
  if (m < 2880) return `${Math.round(m / 60)} h`;
  return `${Math.round(m / 1440)} days`;
}

export async function render(main, ctx) {
  const id = ctx.params[0];
  let d = await api.get(`/dashboards/${id}`);
  // id → name of the devices the widgets name (null: not found); the editor's picker adds to it.
  const names = {};
  const [list] = await Promise.all([
    api.get(`/dashboards${api.qs(scopeQuery(d))}`),
    loadNames(names, d.widgets.flatMap(widgetDevices)),
  ]);
  const canEdit = d.fleet_id ? canOnFleet(d.workspace_id, d.fleet_id, 'operator') : canOnWorkspace(d.workspace_id, 'operator');
  // The shared window: `span` back from `to`; `to` null while live (it follows now).
  const view = { span: d.window.last_mins * 60000, to: null };
  const range = () => {
    const to = view.to ?? Date.now();
    return { from: to - view.span, to };
  };

  const heading = h('h1', { tabindex: '-1' }, d.name);
  const rangeText = h('p', { class: 'muted', id: 'dashboard-range', 'aria-live': 'polite' });
  const liveDot = h('span', { class: 'live-dot', id: 'dashboard-live' }, 'connecting');
  const windowSel = select(WINDOWS.map(([v, l]) => [String(v), l]), String(d.window.last_mins), { id: 'dashboard-window-view' });
  if (!WINDOWS.some(([v]) => v === d.window.last_mins)) windowSel.prepend(h('option', { value: String(d.window.last_mins), selected: true }, fmtSpan(d.window.last_mins * 60000)));
  const grid = h('div', { class: 'dash-grid', id: 'dashboard-grid' });
  const editor = h('section', { id: 'dashboard-editor', 'aria-labelledby': 'editor-h', hidden: true });
  const liveBtn = h('button', { type: 'button', id: 'dash-live', 'aria-pressed': 'true' }, 'Live');
  const editBtn = canEdit ? h('button', { type: 'button', id: 'dashboard-edit', 'aria-controls': 'dashboard-editor', 'aria-expanded': 'false', onclick: () => openEditor() }, 'Edit dashboard') : null;

  const setView = (span, to) => {
    view.span = Math.max(MIN_SPAN, Math.min(MAX_SPAN, span));
    view.to = to === null || to >= Date.now() ? null : to;
    refresh();
  };
  const toolbar = h('div', { class: 'filters dash-toolbar', role: 'group', 'aria-label': 'Time window' },
    field('Window', windowSel),
    h('button', { type: 'button', id: 'dash-zoom-in', onclick: () => { const { from, to } = range(); const c = (from + to) / 2; setView(view.span / 2, view.to === null ? null : c + view.span / 4); } }, 'Zoom in'),
    h('button', { type: 'button', id: 'dash-zoom-out', onclick: () => { const { to } = range(); setView(view.span * 2, view.to === null ? null : to + view.span / 2); } }, 'Zoom out'),
    h('button', { type: 'button', id: 'dash-earlier', onclick: () => { const { to } = range(); setView(view.span, to - view.span / 2); } }, '← Earlier'),
    h('button', { type: 'button', id: 'dash-later', onclick: () => { const { to } = range(); setView(view.span, to + view.span / 2); } }, 'Later →'),
    liveBtn,
    editBtn);
  liveBtn.addEventListener('click', () => setView(Number(windowSel.value) * 60000, null));
  windowSel.addEventListener('change', () => setView(Number(windowSel.value) * 60000, view.to));

  clear(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/dashboards' }, 'Dashboards'), ' / ', d.name),
    heading,
    d.description ? h('p', {}, d.description) : null,
    h('div', { class: 'row' }, liveDot, rangeText),
    toolbar,
    canEdit ? null : roleNote('operator', 'Editing this dashboard', d.fleet_id ? null : 'workspace'),
    editor,
    grid);

  let boxes = [];
  function layout() {
    boxes = d.widgets.map((w, i) => {
      const body = h('div', { class: 'widget-body', id: `widget-${i}-body` }, h('p', { class: 'muted' }, 'Loading…'));
      grid.append(h('article', { class: `widget w${w.width} kind-${w.kind}`, id: `widget-${i}`, 'aria-labelledby': `widget-${i}-h`, 'data-kind': w.kind },
        h('h2', { id: `widget-${i}-h` }, w.title || KINDS.find(([k]) => k === w.kind)?.[1] || w.kind), body));
      return body;
    });
    if (!d.widgets.length) grid.append(h('p', { class: 'muted', id: 'dashboard-empty' }, canEdit ? 'No widgets yet: edit the dashboard to add some.' : 'No widgets yet.'));
  }
  function relayout() { grid.replaceChildren(); drawnAt = []; layout(); }

  let drawing = null;
  // What to redraw once the drawing under way is done: null, 'live' or 'all'.
  let again = null;
  // When each widget was last drawn (ms), for the maps' slower live rate.
  let drawnAt = [];
  /** Redraws the widgets; `live` (new data on the stream) leaves maps drawn less than MAP_EVERY ago. */
  async function refresh(live = false) {
    // One drawing at a time; a refresh asked for meanwhile runs once after it.
    if (drawing) {
      again = again === 'all' || !live ? 'all' : 'live';
      return drawing;
    }
    const { from, to } = range();
    liveBtn.setAttribute('aria-pressed', String(view.to === null));
    rangeText.textContent = `${view.to === null ? 'Live: ' : ''}${new Date(from).toLocaleString()} – ${new Date(to).toLocaleString()} (${fmtSpan(view.span)})`;
    const width = Math.max(320, (grid.clientWidth || 900) * 0.95);
    const wctx = { dashboard: d, from, to, names, tileUrl: list.tile_url, width };
    const now = Date.now();
    drawing = Promise.all(d.widgets.map((w, i) => {
      if (live && w.kind === 'map' && now - (drawnAt[i] || 0) < MAP_EVERY) return null;
      drawnAt[i] = now;
      return draw(boxes[i], w, { ...wctx, width: (width * w.width) / 4 });
    }));
    await drawing;
    grid.dataset.drawnAt = String(Date.now());
    drawing = null;
    if (again) {
      const next = again;
      again = null;
      await refresh(next === 'live');
    }
  }

  layout();
  await refresh();

  // Live: the server sends the events of the dashboard's fleet or workspace (every device of
  // it, however many); each redraws, at most every LIVE_EVERY, however often devices send (a
  // `lagged` notice, events missed, redraws too). The window moves with the clock every 30 s
  // while live, through the same throttle (that redraw includes the maps).
  let whole = false;
  const soon = throttle(() => {
    const all = whole;
    whole = false;
    refresh(!all);
  }, LIVE_EVERY);
  ctx.cleanup(() => soon.cancel());
  ctx.cleanup(api.events({ kinds: 'telemetry_stored,condition,device_connected,device_disconnected', ...scopeQuery(d) }, () => soon(), (up) => {
    liveDot.classList.toggle('up', up);
    liveDot.textContent = up ? 'live' : 'reconnecting';
  }));
  const timer = setInterval(() => {
    if (view.to !== null) return;
    whole = true;
    soon();
  }, 30000);
  ctx.cleanup(() => clearInterval(timer));

  // ---- editing ----
  function openEditor() {
    if (!editor.hidden) { editor.querySelector('h2').focus(); return; }
    const draft = JSON.parse(JSON.stringify(d));
    // The widget the form edits (its index), or null while it adds a new one.
    let editing = null;
    editor.hidden = false;
    editBtn?.setAttribute('aria-expanded', 'true');
    const err = h('div', { class: 'form-error', id: 'dashboard-error', role: 'alert' });
    const items = h('ol', { class: 'plain widget-list', id: 'widget-list', tabindex: '-1', 'aria-labelledby': 'widgets-h' });
    const nameIn = h('input', { id: 'edit-name', value: draft.name, required: true, maxlength: '100' });
    const windowIn = select(WINDOWS.map(([v, l]) => [String(v), l]), String(draft.window.last_mins), { id: 'edit-window' });
    if (!WINDOWS.some(([v]) => v === draft.window.last_mins)) windowIn.prepend(h('option', { value: String(draft.window.last_mins), selected: true }, fmtSpan(draft.window.last_mins * 60000)));

    /** Swaps widgets `a` and `b` of the draft; the widget being edited keeps its form. */
    const swap = (a, b) => {
      [draft.widgets[a], draft.widgets[b]] = [draft.widgets[b], draft.widgets[a]];
      if (editing === a) setMode(b);
      else if (editing === b) setMode(a);
    };
    /**
     * Draws the list of widgets; `focus` ({i, action}) puts focus on item `i`'s button for that
     * action after a move or a removal (the other move button when that one is disabled at an
     * end; the list itself when no widget is left).
     */
    const drawList = (focus) => {
      clear(items, draft.widgets.map((w, i) => {
        const name = w.title || '(untitled)';
        const btn = (action, text, label, disabled, f, cls = 'small') => h('button', { type: 'button', class: cls, 'data-action': action, disabled, 'aria-label': label, onclick: f }, text);
        return h('li', { class: 'row', 'data-index': String(i) },
          h('span', {}, `${i + 1}. `, h('strong', {}, name), ` — ${KINDS.find(([k]) => k === w.kind)?.[1] || w.kind}, ${w.width} column${w.width > 1 ? 's' : ''}`),
          btn('up', 'Up', `Move ${name} up`, i === 0, () => {
            swap(i - 1, i);
            drawList({ i: i - 1, action: 'up' });
            announce(`${name} moved up to place ${i}.`);
          }),
          btn('down', 'Down', `Move ${name} down`, i === draft.widgets.length - 1, () => {
            swap(i + 1, i);
            drawList({ i: i + 1, action: 'down' });
            announce(`${name} moved down to place ${i + 2}.`);
          }),
          btn('edit', 'Edit', `Edit ${name}`, false, () => loadWidget(draft.widgets[i], i)),
          btn('remove', 'Remove', `Remove ${name}`, false, () => {
            draft.widgets.splice(i, 1);
            if (editing === i) { setMode(null); resetForm(); } else if (editing !== null && editing > i) setMode(editing - 1);
            drawList({ i: Math.min(i, draft.widgets.length - 1), action: 'remove' });
            announce(`${name} removed.`);
          }, 'small danger'));
      }));
      if (!draft.widgets.length) items.append(h('li', { class: 'muted' }, 'No widgets.'));
      if (focus) {
        const li = items.querySelector(`li[data-index="${focus.i}"]`);
        const order = { up: ['up', 'down'], down: ['down', 'up'] }[focus.action] || [focus.action, 'edit'];
        const target = li && order.map((a) => li.querySelector(`[data-action="${a}"]`)).find((b) => b && !b.disabled);
        (target || items).focus();
      }
    };
    drawList();

    // The add-widget form: fields follow the chosen kind.
    const kindSel = select(KINDS, 'chart', { id: 'widget-kind', name: 'kind' });
    const kindFields = h('div', { class: 'kind-fields', id: 'widget-fields' });
    // The device pickers of the kind shown (chart: `devices`; value and gauge: `device`).
    let pickers = {};
    const showFields = () => {
      const k = kindSel.value;
      const keysIn = (def) => field('Keys', h('input', { name: 'keys', id: 'widget-keys', value: def, required: true }), 'Comma-separated telemetry keys');
      const scope = scopeQuery(draft);
      pickers = {};
      const onePicker = () => {
        pickers.device = devicePicker({ id: 'widget-device', label: 'Device', hint: 'Type part of its name; choosing another replaces it.', max: 1, scope, names });
        return pickers.device.el;
      };
      const parts = {
        chart: () => {
          pickers.devices = devicePicker({ id: 'widget-devices', label: 'Devices', hint: 'Up to 10. Type part of a name; Enter or the matches below add one.', max: 10, scope, names });
          return [
            pickers.devices.el,
            keysIn(''),
            field('Interval', select([['', 'Automatic'], ['1m', '1 min'], ['5m', '5 min'], ['15m', '15 min'], ['1h', '1 hour'], ['1d', '1 day']], '', { name: 'interval', id: 'widget-interval' })),
            field('Show', select([['avg', 'Average'], ['min', 'Minimum'], ['max', 'Maximum'], ['sum', 'Sum']], 'avg', { name: 'agg', id: 'widget-agg' })),
          ];
        },
        value: () => [
          onePicker(),
          field('Key', h('input', { name: 'key', id: 'widget-key', required: true })),
          field('Unit', h('input', { name: 'unit', id: 'widget-unit', maxlength: '16' })),
        ],
        gauge: () => [
          onePicker(),
          field('Key', h('input', { name: 'key', id: 'widget-key', required: true })),
          field('Minimum', h('input', { name: 'min', id: 'widget-min', type: 'number', step: 'any', value: '0', required: true })),
          field('Maximum', h('input', { name: 'max', id: 'widget-max', type: 'number', step: 'any', value: '100', required: true })),
          field('Unit', h('input', { name: 'unit', id: 'widget-unit', maxlength: '16' })),
        ],
        table: () => [keysIn(''), field('Rows', h('input', { name: 'limit', id: 'widget-limit', type: 'number', min: '1', max: '200', value: '50' }))],
        conditions: () => [field('At least', select([['', 'Any severity'], ['critical', 'critical'], ['major', 'major'], ['minor', 'minor'], ['warning', 'warning']], '', { name: 'min_severity', id: 'widget-severity' }))],
        map: () => [
          field('Latitude key', h('input', { name: 'lat_key', id: 'widget-lat', value: 'latitude', required: true })),
          field('Longitude key', h('input', { name: 'lon_key', id: 'widget-lon', value: 'longitude', required: true })),
        ],
      };
      clear(kindFields, parts[k]());
    };
    kindSel.addEventListener('change', showFields);
    showFields();
    const formTitle = h('h3', { id: 'widget-new' }, 'Add a widget');
    const submitBtn = h('button', { type: 'submit' }, 'Add widget');
    // While a widget is edited: back to adding, the widget unchanged.
    const stopBtn = h('button', { type: 'button', id: 'widget-stop', hidden: true, onclick: () => {
      const i = editing;
      setMode(null);
      resetForm();
      drawList({ i, action: 'edit' });
      announce('The widget is unchanged.');
    } }, 'Cancel change');
    const addForm = h('form', { class: 'inline-form', id: 'widget-form', 'aria-labelledby': 'widget-new' },
      formTitle,
      field('Kind', kindSel),
      field('Title', h('input', { name: 'title', id: 'widget-title', maxlength: '100', required: true })),
      field('Width', select([['1', '1 column'], ['2', '2 columns'], ['3', '3 columns'], ['4', 'Full width']], '2', { name: 'width', id: 'widget-width' })),
      kindFields,
      submitBtn, stopBtn);
    function setMode(i) {
      editing = i;
      formTitle.textContent = i === null ? 'Add a widget' : `Edit widget ${i + 1}`;
      submitBtn.textContent = i === null ? 'Add widget' : 'Update widget';
      stopBtn.hidden = i === null;
    }
    function resetForm() {
      addForm.reset();
      showFields();
    }
    /** Fills the form with widget `i` to change it in place. */
    function loadWidget(w, i) {
      kindSel.value = w.kind;
      showFields();
      const set = (sel, v) => { const el = addForm.querySelector(sel); if (el && v !== undefined && v !== null) el.value = String(v); };
      set('#widget-title', w.title);
      set('#widget-width', w.width);
      if (w.kind === 'chart') {
        pickers.devices.set(w.devices);
        set('#widget-interval', w.interval || '');
        set('#widget-agg', w.agg || 'avg');
      }
      if (w.keys) set('#widget-keys', w.keys.join(', '));
      if (w.kind === 'value' || w.kind === 'gauge') { pickers.device.set([w.device_id]); set('#widget-key', w.key); set('#widget-unit', w.unit || ''); }
      if (w.kind === 'gauge') { set('#widget-min', w.min); set('#widget-max', w.max); }
      if (w.kind === 'table') set('#widget-limit', w.limit);
      if (w.kind === 'conditions') set('#widget-severity', w.min_severity || '');
      if (w.kind === 'map') { set('#widget-lat', w.lat_key); set('#widget-lon', w.lon_key); }
      setMode(i);
      addForm.querySelector('#widget-title').focus();
    }
    addForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const f = new FormData(addForm);
      const keys = () => String(f.get('keys') || '').split(',').map((x) => x.trim()).filter(Boolean);
      const w = { kind: kindSel.value, title: String(f.get('title')), width: Number(f.get('width')) };
      if (w.kind === 'chart') Object.assign(w, { devices: pickers.devices.value(), keys: keys(), interval: f.get('interval') || undefined, agg: f.get('agg') });
      if (w.kind === 'value' || w.kind === 'gauge') Object.assign(w, { device_id: pickers.device.value()[0], key: String(f.get('key')).trim(), unit: String(f.get('unit') || '') });
      if (w.kind === 'gauge') Object.assign(w, { min: Number(f.get('min')), max: Number(f.get('max')) });
      if (w.kind === 'table') Object.assign(w, { keys: keys(), limit: Number(f.get('limit') || 50) });
      if (w.kind === 'conditions' && f.get('min_severity')) w.min_severity = f.get('min_severity');
      if (w.kind === 'map') Object.assign(w, { lat_key: String(f.get('lat_key')).trim(), lon_key: String(f.get('lon_key')).trim() });
      const changed = editing;
      if (changed === null) draft.widgets.push(w);
      else draft.widgets[changed] = w;
      announce(`${w.title} ${changed === null ? 'added' : 'changed'}; save the dashboard to keep it.`);
      setMode(null);
      resetForm();
      // After an addition, the form is ready for the next; after a change, back to that widget.
      if (changed === null) {
        drawList();
        addForm.querySelector('#widget-title').focus();
      } else drawList({ i: changed, action: 'edit' });
    });

    const close = () => {
      editor.hidden = true;
      clear(editor);
      editBtn?.setAttribute('aria-expanded', 'false');
    };
    const save = h('button', { type: 'button', class: 'primary', id: 'dashboard-save', onclick: async () => {
      save.disabled = true;
      err.textContent = '';
      try {
        d = await api.put(`/dashboards/${id}`, { name: nameIn.value, description: draft.description, window: { last_mins: Number(windowIn.value) }, widgets: draft.widgets });
        heading.textContent = d.name;
        close();
        toast('Dashboard saved.');
        announce('Dashboard saved.');
        heading.focus();
        view.span = d.window.last_mins * 60000;
        windowSel.value = String(d.window.last_mins);
        await loadNames(names, d.widgets.flatMap(widgetDevices));
        relayout();
        await refresh();
      } catch (e) {
        err.textContent = errorText(e);
        save.focus();
      } finally {
        save.disabled = false;
      }
    } }, 'Save dashboard');
    let confirming = false;
    const del = h('button', { type: 'button', class: 'danger', id: 'dashboard-delete', onclick: async () => {
      if (!confirming) {
        confirming = true;
        del.textContent = 'Really delete this dashboard?';
        announce('Press again to delete the dashboard for good.');
        return;
      }
      try {
        await api.del(`/dashboards/${id}`);
        toast('Dashboard deleted.');
        ctx.go('/dashboards');
      } catch (e) { err.textContent = errorText(e); }
    } }, 'Delete dashboard');
    clear(editor, h('h2', { id: 'editor-h', tabindex: '-1' }, 'Edit dashboard'),
      h('div', { class: 'inline-form' }, field('Name', nameIn), field('Window', windowIn)),
      h('h3', { id: 'widgets-h' }, 'Widgets'), items, addForm, err,
      h('div', { class: 'form-buttons' }, save,
        h('button', { type: 'button', id: 'dashboard-cancel', onclick: () => { close(); announce('Changes dropped.'); editBtn?.focus(); } }, 'Cancel'), del));
    editor.querySelector('h2').focus();
  }
  if (ctx.query.edit === '1' && canEdit) openEditor();
}
