// A small SVG line chart: time on x, numeric series on y (one, or a few on a shared axis, each
// in its own colour class), with nice ticks and a tooltip on each point. Drawn with SVG
// attributes and CSS classes only (the CSP allows no inline styles). For aggregates, `band`
// draws the min–max range behind the first series' average line.

const NS = 'http://www.w3.org/2000/svg';
const M = { top: 12, right: 16, bottom: 34, left: 64 };

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** Round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (lo === hi) { lo -= 1; hi += 1; }
  const span = hi - lo;
  const step0 = span / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const norm = step0 / mag;
  const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  const out = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function timeLabel(ms, span) {
  const d = new Date(ms);
  if (span <= 2 * 86400000) return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

/**
 * points: [{ts, v, min?, max?}] in time order; from/to: the range shown (ms); width: of the box;
 * more: further series [{name, points}] drawn on the same axes (classes `line s1`, `s2`...).
 * Returns an <svg> element (role img, labelled by `label`).
 */
export function lineChart(points, { from, to, label, band = false, width = 800, name = '', more = [] }) {
  // The drawing is as wide as its box (in CSS pixels), so that labels keep their size on a phone.
  const W = Math.round(Math.max(320, Math.min(1200, width)));
  const H = W < 600 ? 220 : 280;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': label });
  svg.append(s('title', {}, label));
  const nums = points.filter((p) => Number.isFinite(p.v));
  const others = more.map((m) => ({ name: m.name, nums: m.points.filter((p) => Number.isFinite(p.v)) }));
  const all = nums.concat(...others.map((o) => o.nums));
  if (!all.length) {
    svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'chart-empty' }, 'No numeric data in this range'));
    return svg;
  }
  let lo = Math.min(...nums.map((p) => (band && Number.isFinite(p.min) ? p.min : p.v)), ...others.flatMap((o) => o.nums.map((p) => p.v)));
  let hi = Math.max(...nums.map((p) => (band && Number.isFinite(p.max) ? p.max : p.v)), ...others.flatMap((o) => o.nums.map((p) => p.v)));
  const ticks = niceTicks(lo, hi);
  lo = Math.min(lo, ticks[0]);
  hi = Math.max(hi, ticks[ticks.length - 1]);
  if (lo === hi) hi = lo + 1;
  const x0 = from ?? Math.min(...all.map((p) => p.ts));
  const x1 = Math.max(to ?? Math.max(...all.map((p) => p.ts)), x0 + 1);
  const px = (t) => M.left + ((t - x0) / (x1 - x0)) * (W - M.left - M.right);
  const py = (v) => H - M.bottom - ((v - lo) / (hi - lo)) * (H - M.top - M.bottom);

  const grid = s('g', { class: 'grid' });
  for (const t of ticks) {
    grid.append(s('line', { x1: M.left, x2: W - M.right, y1: py(t), y2: py(t) }));
    grid.append(s('text', { x: M.left - 8, y: py(t) + 4, 'text-anchor': 'end', class: 'tick' }, String(t)));
  }
  const nx = W < 600 ? 3 : 6;
  for (let i = 0; i <= nx; i++) {
    const t = x0 + ((x1 - x0) * i) / nx;
    grid.append(s('text', { x: px(t), y: H - M.bottom + 20, 'text-anchor': i === 0 ? 'start' : i === nx ? 'end' : 'middle', class: 'tick' }, timeLabel(t, x1 - x0)));
  }
  grid.append(s('line', { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: 'axis' }));
  svg.append(grid);

  if (band) {
    const withRange = nums.filter((p) => Number.isFinite(p.min) && Number.isFinite(p.max));
    if (withRange.length > 1) {
      const top = withRange.map((p) => `${px(p.ts).toFixed(1)},${py(p.max).toFixed(1)}`);
      const bottom = withRange.slice().reverse().map((p) => `${px(p.ts).toFixed(1)},${py(p.min).toFixed(1)}`);
      svg.append(s('polygon', { points: [...top, ...bottom].join(' '), class: 'band' }));
    }
  }
  [{ name, nums }, ...others].forEach((series, i) => {
    if (!series.nums.length) return;
    const cls = i ? ` s${i}` : '';
    const d = series.nums.map((p, j) => `${j ? 'L' : 'M'}${px(p.ts).toFixed(1)},${py(p.v).toFixed(1)}`).join('');
    svg.append(s('path', { d, class: `line${cls}`, 'data-series': series.name }));
    if (series.nums.length <= 60) {
      const dots = s('g', { class: `dots${cls}` });
      const who = series.name ? `${series.name} ` : '';
      for (const p of series.nums) dots.append(s('circle', { cx: px(p.ts).toFixed(1), cy: py(p.v).toFixed(1), r: 3 }, s('title', {}, `${who}${new Date(p.ts).toLocaleString()}: ${p.v}`)));
      svg.append(dots);
    }
  });
  return svg;
}

/**
 * A sparkline of `values` (one per minute, oldest first): a small SVG line with the total and
 * the peak in its label (role img), and the total in `data-total` for tests.
 */
export function sparkline(values, label) {
  const W = 120;
  const H = 28;
  const total = values.reduce((a, b) => a + b, 0);
  const peak = Math.max(0, ...values);
  const text = `${label}: ${total} messages in the last hour, at most ${peak} a minute`;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'sparkline', role: 'img', 'aria-label': text, 'data-total': total }, s('title', {}, text));
  if (values.length > 1) {
    const px = (i) => (i * (W - 2)) / (values.length - 1) + 1;
    const py = (v) => H - 2 - (peak ? (v / peak) * (H - 4) : 0);
    svg.append(s('path', { d: values.map((v, i) => `${i ? 'L' : 'M'}${px(i).toFixed(1)},${py(v).toFixed(1)}`).join(''), class: 'spark-line' }));
  }
  return svg;
}
