// The device picker of the dashboard editor: a search field that asks the server for the
// devices of the dashboard's scope whose name contains the text (`GET /devices?name=`, the
// first 50 by name), the matches as buttons that add one, and the chosen devices as a list
// whose items each have a remove button. It never lists a whole fleet, so it works the same
// over ten devices or a hundred thousand. The form around it owns the widget; the names it
// learns go into the page's shared id → name map.
//
// Keyboard: type part of a name; Enter adds the match with exactly that name (or the only
// match) and otherwise moves to the matches. The matches are one tab stop: ↓ moves there from
// the field, ↑ and ↓ (Home, End) between them, Escape back to the field. After an addition
// focus stays on the matches (or the field); after a removal it moves to the next chosen
// device (or the field).

import * as api from './api.js';
import { h, clear, debounce, announce, errorText } from './dom.js';

const PAGE = 50;

/** A device's name for people: its name, or its short id when it is not known (deleted). */
export function nameOf(names, id) {
  const n = names[id];
  return n || (n === null ? `${id.slice(0, 8)} (not found)` : id.slice(0, 8));
}

/**
 * A picker of up to `max` devices; with `max` 1 a new choice replaces the old one.
 * `id` prefixes the ids of its parts (`${id}-search`, `${id}-chosen`, `${id}-results`);
 * `label` names the field; `scope` is the query of the dashboard's devices ({fleet_id} or
 * {workspace_id}); `names` the page's id → name map (null: known not to exist), read and
 * filled in. Returns {el, value() → chosen ids, set(ids)}.
 */
export function devicePicker({ id, label, hint, max, scope, names }) {
  let chosen = [];
  let matches = [];
  let total = 0;
  let shownFor = null; // the text the matches shown answer
  let ctl = null;

  const search = h('input', {
    type: 'search', id: `${id}-search`, autocomplete: 'off', spellcheck: 'false',
    'aria-describedby': `${id}-hint ${id}-status`, 'aria-controls': `${id}-results`,
    placeholder: 'name contains…',
  });
  const chosenList = h('ul', { class: 'plain chips', id: `${id}-chosen`, 'aria-label': `Chosen ${label.toLowerCase()}` });
  const status = h('p', { class: 'muted picker-status', id: `${id}-status`, 'aria-live': 'polite' }, 'Looking for devices…');
  const results = h('ul', { class: 'plain picker-results', id: `${id}-results`, 'aria-label': 'Matching devices' });
  const el = h('div', { class: 'field device-picker', role: 'group', 'aria-labelledby': `${id}-label` },
    h('label', { for: search.id, id: `${id}-label` }, label),
    chosenList,
    search,
    h('small', { id: `${id}-hint` }, hint),
    status,
    results);

  const full = () => max > 1 && chosen.length >= max;
  const validity = () => search.setCustomValidity(chosen.length ? '' : `Choose ${max > 1 ? 'at least one device' : 'a device'}.`);

  function drawChosen() {
    clear(chosenList, chosen.map((d, i) => h('li', { class: 'chip', 'data-device': d },
      h('span', {}, nameOf(names, d)),
      h('button', { type: 'button', class: 'small', 'data-index': i, 'aria-label': `Remove ${nameOf(names, d)}`, onclick: () => remove(i) }, '×'))));
    chosenList.hidden = !chosen.length;
    validity();
  }

  function drawResults() {
    if (shownFor === null) return; // the first search has not answered yet
    const open = matches.filter((d) => !chosen.includes(d.id));
    // One tab stop for the whole list (a roving tabindex): Tab passes it, arrows move in it.
    clear(results, open.map((d, i) => h('li', {},
      h('button', { type: 'button', class: 'small add', 'data-device': d.id, disabled: full(), tabindex: i === 0 ? '0' : '-1', 'aria-label': `Add ${d.name}`, onclick: (ev) => add(d, ev.currentTarget) },
        h('span', { 'aria-hidden': 'true' }, '+ '), d.name, d.label ? h('span', { class: 'muted' }, ` · ${d.label}`) : null))));
    const q = shownFor || '';
    let text;
    if (!total) text = q ? `No device's name contains "${q}".` : 'This dashboard has no devices yet.';
    else if (total > matches.length) text = `The first ${matches.length} of ${total} ${q ? 'matches' : 'devices'}: type more of the name.`;
    else text = `${total} ${q ? (total === 1 ? 'match' : 'matches') : (total === 1 ? 'device' : 'devices')}.`;
    if (full()) text += ` ${max} devices chosen, the most a widget takes: remove one to add another.`;
    status.textContent = text;
  }

  async function find(q) {
    ctl?.abort();
    const mine = new AbortController();
    ctl = mine;
    try {
      const r = await api.get(`/devices${api.qs({ ...scope, name: q, limit: PAGE, sort: 'name' })}`, { signal: mine.signal });
      for (const d of r.items) names[d.id] = d.name;
      matches = r.items;
      total = r.total;
      shownFor = q;
      drawResults();
    } catch (e) {
      if (e.name === 'AbortError') return;
      status.textContent = errorText(e);
    } finally {
      if (ctl === mine) ctl = null;
    }
  }
  const findSoon = debounce(() => find(search.value.trim()), 250);

  function add(d, from) {
    if (chosen.includes(d.id) || full()) return;
    const buttons = [...results.querySelectorAll('button')];
    const at = from ? buttons.indexOf(from) : -1;
    names[d.id] = d.name;
    chosen = max === 1 ? [d.id] : [...chosen, d.id];
    drawChosen();
    drawResults();
    announce(max === 1 ? `${d.name} chosen.` : `${d.name} added: ${chosen.length} of at most ${max}.`);
    if (from) {
      const next = [...results.querySelectorAll('button:not(:disabled)')];
      const b = next[Math.min(at, next.length - 1)];
      if (b) rove(b);
      else search.focus();
    }
  }

  function remove(i) {
    const [d] = chosen.splice(i, 1);
    drawChosen();
    drawResults();
    announce(`${nameOf(names, d)} removed.`);
    const left = [...chosenList.querySelectorAll('button')];
    (left[Math.min(i, left.length - 1)] || search).focus();
  }

  /** Focuses result button `b`, the list's one tab stop from now on. */
  function rove(b) {
    for (const x of results.querySelectorAll('button')) x.tabIndex = x === b ? 0 : -1;
    b.focus();
  }

  search.addEventListener('input', findSoon);
  search.addEventListener('keydown', async (ev) => {
    if (ev.key === 'ArrowDown') {
      ev.preventDefault();
      const b = results.querySelector('button:not(:disabled)');
      if (b) rove(b);
    } else if (ev.key === 'Enter') {
      // Enter here picks a device; it never submits the widget's form.
      ev.preventDefault();
      const q = search.value.trim();
      if (shownFor !== q) await find(q);
      const open = matches.filter((d) => !chosen.includes(d.id));
      const exact = open.find((d) => d.name.toLowerCase() === q.toLowerCase());
      if (exact || open.length === 1) add(exact || open[0], null);
      else if (open.length) {
        rove(results.querySelector('button:not(:disabled)'));
        announce(`${total} devices match: choose one.`);
      }
    }
  });
  results.addEventListener('keydown', (ev) => {
    const buttons = [...results.querySelectorAll('button:not(:disabled)')];
    const i = buttons.indexOf(document.activeElement);
    if (i < 0) return;
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      const j = i + (ev.key === 'ArrowDown' ? 1 : -1);
      if (j < 0) search.focus();
      else rove(buttons[Math.min(j, buttons.length - 1)]);
    } else if (ev.key === 'Home' || ev.key === 'End') {
      ev.preventDefault();
      rove(buttons[ev.key === 'Home' ? 0 : buttons.length - 1]);
    } else if (ev.key === 'Escape') {
      ev.preventDefault();
      search.focus();
    }
  });

  drawChosen();
  find('');
  return {
    el,
    value: () => [...chosen],
    /** Shows `ids` as chosen; names not known yet are read (a deleted device keeps its short id). */
    async set(ids) {
      chosen = ids.slice(0, max);
      drawChosen();
      drawResults();
      const unknown = chosen.filter((d) => !(d in names));
      if (!unknown.length) return;
      await Promise.all(unknown.map((d) => api.get(`/devices/${d}`).then((x) => { names[d] = x.name; }, (e) => { if (e.status === 404) names[d] = null; })));
      drawChosen();
    },
  };
}
