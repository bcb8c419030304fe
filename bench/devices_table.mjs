// The devices table with many devices: starts a `corral` binary on 127.0.0.1 (port 0, a temp
// data dir), imports N devices (default 10,000) through the CSV import, gives a tenth of them
// telemetry with a firmware version, then times the list API (creation order, each sort, a
// filter, latest values), the CSV export, the overview, and the web UI's devices page in
// headless Chromium (from navigation to the first page drawn, and a sort click). Prints a
// markdown table for BENCHMARKS.md. Figures, not assertions.
//
//   node bench/devices_table.mjs target/release/corral [N]
//
// Needs node >= 20 and Debian's chromium; playwright-core from `target/ui-tests` (which
// `tests/ui/run.sh` installs).

import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';

const binary = process.argv[2];
const N = Number(process.argv[3] || 10000);
if (!binary) { console.error('usage: node bench/devices_table.mjs BINARY [N]'); process.exit(2); }
const root = resolve(new URL('..', import.meta.url).pathname);
const { chromium } = createRequire(join(root, 'target', 'ui-tests', 'package.json'))('playwright-core');
const dataDir = mkdtempSync(join(tmpdir(), 'corral-bench-'));
const adminKey = `crl_bench_${randomBytes(24).toString('hex')}`;
let server;

function start() {
  return new Promise((ok, fail) => {
    server = spawn(binary, ['serve', '--log-format', 'json'], {
      env: {
        PATH: process.env.PATH, CORRAL_DATA_DIR: join(dataDir, 'data'), CORRAL_ADMIN_KEY: adminKey,
        CORRAL_HTTP__LISTEN: '127.0.0.1:0', CORRAL_HTTPS__ENABLED: 'false', CORRAL_MQTT__TLS_LISTEN: '127.0.0.1:0',
        CORRAL_LOG__LEVEL: 'info', CORRAL_STORE__MIN_FREE_MB: '16',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const t = setTimeout(() => fail(new Error('corral did not start')), 30000);
    createInterface({ input: server.stderr }).on('line', (line) => {
      let v; try { v = JSON.parse(line); } catch { return; }
      const f = v.fields || v;
      if ((f.message || v.message) === 'corral is running') { clearTimeout(t); ok(f.http || v.http); }
    });
  });
}

async function main() {
  const base = `http://${await start()}`;
  const rest = async (method, path, body) => {
    const r = await fetch(`${base}/api/v1${path}`, { method, headers: { Authorization: `Bearer ${adminKey}`, 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text.slice(0, 300)}`);
    return text;
  };
  const json = async (m, p, b) => JSON.parse(await rest(m, p, b));
  const ws = await json('POST', '/workspaces', { name: 'bench' });
  const fleets = [];
  for (const name of ['north', 'south', 'east', 'west']) fleets.push(await json('POST', '/fleets', { workspace_id: ws.id, name }));
  const rows = ['name,label,fleet,token'];
  for (let i = 0; i < N; i++) rows.push(`dev-${String(i).padStart(5, '0')},${i % 3 ? 'roof' : 'cellar'},${fleets[i % 4].name},bench-token-${i}`);
  let t0 = performance.now();
  const imported = await json('POST', '/devices/import', { csv: `${rows.join('\n')}\n`, workspace_id: ws.id });
  const importMs = performance.now() - t0;
  // A tenth report firmware and a temperature through the HTTP device API.
  for (let i = 0; i < N; i += 10) {
    await fetch(`${base}/api/v1/bench-token-${i}/telemetry`, { method: 'POST', body: JSON.stringify({ current_fw_version: `1.${i % 7}.0`, temperature: i % 40 }) });
  }
  const results = [];
  const time = async (label, path, runs = 5) => {
    const ms = [];
    for (let i = 0; i < runs; i++) {
      const s = performance.now();
      await rest('GET', path);
      ms.push(performance.now() - s);
    }
    ms.sort((a, b) => a - b);
    results.push([label, ms[Math.floor(ms.length / 2)]]);
  };
  await time('`GET /devices?limit=50` (creation order, with total)', '/devices?limit=50');
  await time('`sort=name&offset=5000&limit=50`', '/devices?sort=name&offset=5000&limit=50');
  await time('`sort=fleet&limit=50`', '/devices?sort=fleet&limit=50');
  await time('`sort=status&limit=50`', '/devices?sort=status&limit=50');
  await time('`sort=last_activity&order=desc&limit=50`', '/devices?sort=last_activity&order=desc&limit=50');
  await time('`sort=firmware&limit=50` (a firmware read per device)', '/devices?sort=firmware&limit=50');
  await time('`name=dev-01&label=roof&sort=name&limit=50`', '/devices?name=dev-01&label=roof&sort=name&limit=50');
  await time('`sort=name&limit=50&keys=temperature,current_fw_version`', '/devices?sort=name&limit=50&keys=temperature,current_fw_version');
  await time('`GET /devices/export` (every device, CSV)', '/devices/export', 3);
  await time('`GET /overview` (fleet health)', '/overview');
  // The page in a browser, signed in with the API key.
  const executablePath = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync);
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--disable-dev-shm-usage', ...(process.getuid?.() === 0 ? ['--no-sandbox'] : [])] });
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 860 } })).newPage();
  await page.goto(`${base}/`);
  await page.fill('#api-key', adminKey);
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector('main h1:text("Overview")');
  const loads = [];
  const sorts = [];
  for (let i = 0; i < 5; i++) {
    await page.goto(`${base}/#/`);
    await page.waitForSelector('#fleet-health');
    t0 = performance.now();
    await page.click('#nav a[href="#/devices"]');
    await page.waitForSelector(`#device-count:text("${N} devices")`);
    loads.push(performance.now() - t0);
    t0 = performance.now();
    await page.click('th button[data-sort="last_activity"]');
    await page.waitForSelector('th[aria-sort="ascending"] button[data-sort="last_activity"]');
    await page.waitForSelector('#devices-table[aria-busy="false"]');
    sorts.push(performance.now() - t0);
  }
  await browser.close();
  const med = (a) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)];
  results.push(['devices page: menu click to first page drawn (browser)', med(loads)]);
  results.push(['devices page: sort click to page drawn (browser)', med(sorts)]);
  console.log(`devices: ${N} (imported ${imported.created.length} in ${(importMs / 1000).toFixed(1)} s, one CSV request); median of 5 runs (3 for the export)\n`);
  console.log('| request | median ms |\n|---|---:|');
  for (const [l, ms] of results) console.log(`| ${l} | ${ms.toFixed(0)} |`);
}

main().catch((e) => { console.error(e); process.exitCode = 1; }).finally(() => {
  server?.kill('SIGTERM');
  setTimeout(() => { try { rmSync(dataDir, { recursive: true, force: true }); } catch { /* left */ } process.exit(); }, 1500);
});
