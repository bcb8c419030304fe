// Browser tests of the embedded web UI: the real `corral` binary on 127.0.0.1 (port 0, a temp
// data dir), driven in headless Chromium by playwright-core. The main flow: create the first
// admin from the one-time setup link, sign in with a password, create a
// workspace, a fleet and a device, watch the device turn online when a test device connects,
// see its telemetry on the chart, send it a command that the test device answers and see the
// result, follow a condition it reports (a viewer is refused, the operator acknowledges and
// closes it), manage a fleet's onboarding (provisioning used for real, a manufacturer CA) and
// shared defaults, upload firmware with a progress bar and make it a fleet's target (a duplicate,
// an oversized file and deleting a target are refused with the server's reason), check what a
// viewer is offered (and that the server refuses a demoted operator); run an OTA campaign
// created in the UI (a dry-run preview, refusals at their field, an approval the creator may
// not give, waves) against simulated devices (`corral simulate --ota`, one of which comes back
// on its old version) until it completes, and follow it on its page and the devices' pages;
// dashboards: every widget kind, one over more than 1,000 devices, one built by keyboard
// only, and a map on the tiles of a tile server the suite runs, drawn by a second corral
// whose `[ui] tile_url` points at it; then the same UI on a phone-sized screen and the main
// flow by keyboard only.
// Screenshots go to target/ui-artifacts/. Every wait is bounded, and the whole run stops
// itself after SUITE_LIMIT_MS.
//
//   node tests/ui/suite.mjs BINARY        (tests/ui/run.sh installs playwright-core first)

import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import { createServer } from 'node:http';
import { deflateSync } from 'node:zlib';
import { Mqtt } from './mqtt.mjs';

const SUITE_LIMIT_MS = 170_000;
const STEP_MS = 30_000; // default bound of one wait
const binary = process.argv[2];
if (!binary) {
  console.error('usage: node suite.mjs BINARY');
  process.exit(2);
}
const root = resolve(new URL('../..', import.meta.url).pathname);
const nodeDir = process.env.UI_TEST_NODE_DIR || join(root, 'target', 'ui-tests');
const artifacts = process.env.UI_ARTIFACTS || join(root, 'target', 'ui-artifacts');
mkdirSync(artifacts, { recursive: true });
const { chromium } = createRequire(join(nodeDir, 'package.json'))('playwright-core');

const results = [];
let server;
// Further corral servers (the map tile test's), stopped with the suite.
const others = [];
let browser;
let device;
let simulator;
const dataDir = mkdtempSync(join(tmpdir(), 'corral-ui-'));
const serverLog = [];
let setupToken = null;
const ADMIN = { username: 'admin', password: 'correct horse battery' };

const watchdog = setTimeout(() => {
  console.error(`FAIL: the suite did not finish within ${SUITE_LIMIT_MS / 1000} s`);
  shutdown(1);
}, SUITE_LIMIT_MS);

function shutdown(code) {
  try { device?.close(); } catch { /* gone */ }
  try { simulator?.kill('SIGTERM'); } catch { /* gone */ }
  try { server?.kill('SIGTERM'); } catch { /* gone */ }
  for (const p of others) { try { p.kill('SIGTERM'); } catch { /* gone */ } }
  writeFileSync(join(artifacts, 'server.log'), serverLog.join('\n'));
  const done = () => {
    try { rmSync(dataDir, { recursive: true, force: true }); } catch { /* left for inspection */ }
    process.exit(code);
  };
  if (browser) browser.close().then(done, done);
  else done();
  setTimeout(done, 5000).unref();
}

/**
 * Starts corral and resolves with its addresses once it logs that it is running. `opts`:
 * `dir` (its data dir; the main server's by default), `env` (more CORRAL_* settings) and `log`
 * (where its log lines go). The first server started is the suite's main one (`server`).
 */
function startServer(adminKey, { dir = join(dataDir, 'data'), env = {}, log = serverLog } = {}) {
  return new Promise((resolvePromise, reject) => {
    const proc = spawn(binary, ['serve', '--log-format', 'json'], {
      env: {
        PATH: process.env.PATH,
        CORRAL_DATA_DIR: dir,
        CORRAL_ADMIN_KEY: adminKey,
        CORRAL_HTTP__LISTEN: '127.0.0.1:0',
        CORRAL_HTTPS__ENABLED: 'false',
        CORRAL_MQTT__TLS_LISTEN: '127.0.0.1:0',
        CORRAL_MQTT__WORKERS: '1',
        CORRAL_LOG__LEVEL: 'info',
        // Test machines can be short of disk; the reserve has its own suite.
        CORRAL_STORE__MIN_FREE_MB: '16',
        // A small package cap, so that the UI's answer to an oversized upload is checked.
        CORRAL_OTA__MAX_PACKAGE_MB: '1',
        ...env,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    if (server) others.push(proc);
    else server = proc;
    const timer = setTimeout(() => reject(new Error('corral did not start within 30 s')), 30_000);
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`corral exited with ${code}`)); });
    createInterface({ input: proc.stderr }).on('line', (line) => {
      log.push(line.replace(/token=\S+/, 'token=…'));
      const m = line.match(/#\/setup\?token=(\S+)/);
      if (m && proc === server) [, setupToken] = m;
      let v;
      try { v = JSON.parse(line); } catch { return; }
      const f = v.fields || v;
      if ((f.message || v.message) === 'corral is running') {
        clearTimeout(timer);
        resolvePromise({ http: f.http || v.http, mqtt: f.mqtt_tls || v.mqtt_tls, proc });
      }
    });
  });
}

/**
 * A map tile server on 127.0.0.1 (port 0): a small PNG for any `/{z}/{x}/{y}.png`, 404 for the
 * rest; `seen` lists the paths asked for. Resolves with {url (the `{z}/{x}/{y}` template),
 * origin, seen, close}.
 */
function startTileServer() {
  // A 1 × 1 RGB PNG (the map scales it to a tile), built here: signature, IHDR, IDAT, IEND.
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(1, 0);
  ihdr.writeUInt32BE(1, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8 bits, RGB, deflate, no filter, no interlace
  const png = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.from([0, 0xbf, 0xdb, 0xfe]))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
  const seen = [];
  const srv = createServer((req, res) => {
    seen.push(req.url);
    if (/^\/\d+\/\d+\/\d+\.png$/.test(req.url)) {
      res.writeHead(200, { 'Content-Type': 'image/png', 'Content-Length': png.length });
      res.end(png);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((ok) => srv.listen(0, '127.0.0.1', () => {
    const origin = `http://127.0.0.1:${srv.address().port}`;
    ok({ url: `${origin}/{z}/{x}/{y}.png`, origin, seen, close: () => new Promise((done) => { srv.close(done); srv.closeAllConnections(); }) });
  }));
}

async function step(name, f) {
  const started = Date.now();
  try {
    await f();
    results.push([name, true]);
    console.log(`ok - ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`not ok - ${name}: ${e.message.split('\n').slice(0, 4).join(' | ')}`);
    throw e;
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

/** Fails on any CSP violation or script error in the page. */
function guard(page, problems) {
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`); });
}

/** Signs in with the admin's username and password (a session cookie). */
async function signIn(page, base) {
  await page.goto(`${base}/`, { timeout: STEP_MS });
  await page.waitForSelector('#login-form', { timeout: STEP_MS });
  await page.fill('#login-username', ADMIN.username);
  await page.fill('#login-password', ADMIN.password);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('main h1:text("Overview")', { timeout: STEP_MS });
}

/** Signs in with the documented fallback, an admin API key kept in the tab. */
async function signInWithKey(page, base, key) {
  await page.goto(`${base}/`, { timeout: STEP_MS });
  await page.waitForSelector('#api-key', { timeout: STEP_MS });
  await page.fill('#api-key', key);
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector('main h1:text("Overview")', { timeout: STEP_MS });
}

/**
 * Uploads a package through the Packages page's form and waits until the page says it is
 * stored; returns the stored package (read back over the API with `rest`).
 */
async function uploadPackage(page, base, rest, { file, title, version, type = 'firmware', fleetId = '' }) {
  // Through the menu, so that the page is drawn anew (fleets created since included).
  await page.goto(`${base}/#/`);
  await page.click('#nav a[href="#/packages"]');
  await page.waitForSelector('#package-upload-form');
  if (fleetId) await page.waitForSelector(`#package-fleet option[value="${fleetId}"]`, { state: 'attached' });
  await page.setInputFiles('#package-file', file);
  await page.fill('#package-title', title);
  await page.fill('#package-version', version);
  await page.selectOption('#package-type', type);
  await page.selectOption('#package-fleet', fleetId);
  await page.click('#package-upload-form button[type=submit]');
  await page.waitForSelector(`#upload-done:has-text("Package ${title} ${version} uploaded")`);
  const [stored] = (await rest('GET', `/packages?title=${encodeURIComponent(title)}`)).filter((p) => p.version === version);
  if (!stored) throw new Error(`package ${title} ${version} not stored`);
  return stored;
}

async function main() {
  const adminKey = `crl_uitest_${randomBytes(24).toString('hex')}`;
  const addrs = await startServer(adminKey);
  const base = `http://${addrs.http}`;
  const [mqttHost, mqttPort] = [addrs.mqtt.slice(0, addrs.mqtt.lastIndexOf(':')), Number(addrs.mqtt.slice(addrs.mqtt.lastIndexOf(':') + 1))];
  console.log(`# corral at ${base}, MQTT/TLS at ${addrs.mqtt}`);
  const ca = await (await fetch(`${base}/api/v1/ca.pem`)).text();

  const executablePath = process.env.CHROMIUM || ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync);
  if (!executablePath) throw new Error('no chromium found (install Debian\'s chromium or set CHROMIUM)');
  browser = await chromium.launch({
    executablePath,
    headless: true,
    // A small /dev/shm (containers) must not crash the renderer; root cannot use the sandbox.
    args: ['--disable-dev-shm-usage', ...(process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [])],
    timeout: STEP_MS,
  });
  const problems = [];
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(STEP_MS);
  guard(page, problems);
  let token;
  let dashboardHash;
  const rpcSeen = [];
  /** A REST call to the server at `at` with the bootstrap admin key; the parsed answer. */
  const restAt = (at) => async (method, path, body) => {
    const r = await fetch(`${at}/api/v1${path}`, {
      method,
      headers: { Authorization: `Bearer ${adminKey}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  const rest = restAt(base);

  await step('security headers on the UI and the API', async () => {
    for (const path of ['/', '/ui/app.js', '/api/v1/workspaces']) {
      const r = await fetch(`${base}${path}`);
      const csp = r.headers.get('content-security-policy') || '';
      if (!csp.includes("frame-ancestors 'none'") || !csp.includes("script-src 'self'")) throw new Error(`${path}: CSP is "${csp}"`);
      if (r.headers.get('x-content-type-options') !== 'nosniff') throw new Error(`${path}: no nosniff`);
      if (r.headers.get('strict-transport-security')) throw new Error(`${path}: HSTS over plain HTTP`);
    }
  });

  await step('before any user exists, the sign-in page says how to make the first one', async () => {
    await page.goto(`${base}/#/login`);
    await page.waitForSelector('#no-user-yet:has-text("No user exists yet")');
    await page.waitForSelector('#no-user-yet:has-text("corral user create NAME --admin")');
  });

  await step('first admin from the one-time setup link', async () => {
    for (let i = 0; i < 50 && !setupToken; i++) await new Promise((r) => setTimeout(r, 100));
    if (!setupToken) throw new Error('the server printed no setup link');
    await page.goto(`${base}/#/setup?token=${encodeURIComponent(setupToken)}`);
    await page.waitForSelector('#setup-title');
    if ((await page.inputValue('[name=token]')) !== setupToken) throw new Error('the setup token is not filled in from the link');
    await page.fill('[name=username]', ADMIN.username);
    await page.fill('[name=password]', ADMIN.password);
    await page.click('form button[type=submit]');
    await page.waitForSelector('main h1:text("Overview")');
    await page.waitForSelector(`#who:text("${ADMIN.username}")`);
  });

  await step('sign out, then sign in with a password', async () => {
    await page.click('#sign-out');
    await page.waitForSelector('#login-form');
    if (await page.isVisible('#sign-out') || await page.isVisible('#nav')) throw new Error('navigation shows before signing in');
    await shot(page, '01-sign-in');
    // A user exists now: no first-user notice (it comes after an asynchronous check).
    await page.waitForTimeout(300);
    if (await page.isVisible('#no-user-yet')) throw new Error('the first-user notice shows although a user exists');
    await page.fill('#login-username', ADMIN.username);
    await page.fill('#login-password', 'wrong password');
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#login-error:text("Wrong username or password.")');
    await signIn(page, base);
    await page.waitForSelector('#stat-total');
    // The session survives a reload (the cookie, read back through /auth/me).
    await page.reload();
    await page.waitForSelector(`#who:text("${ADMIN.username}")`);
    await shot(page, '02-overview');
  });

  await step('create a workspace and a fleet', async () => {
    await page.click('#nav a[href="#/fleets"]');
    await page.waitForSelector('#workspace-form');
    await page.fill('#workspace-name', 'Plant');
    await page.click('#workspace-form button[type=submit]');
    await page.waitForSelector('td:text-is("Plant")');
    await page.waitForSelector('#fleet-form');
    await page.fill('#fleet-name', 'sensors');
    await page.click('#fleet-form button[type=submit]');
    await page.waitForSelector('a:text-is("sensors")');
    await shot(page, '03-fleets');
  });

  await step('create a device', async () => {
    await page.click('a:text-is("sensors")'); // the fleet's devices
    await page.waitForSelector('#device-form');
    await page.fill('#new-device-name', 'thermo-1');
    await page.fill('#new-device-label', 'boiler room');
    await page.click('#device-form button[type=submit]');
    await page.waitForSelector('#created-token');
    token = await page.inputValue('#created-token');
    if (!/^\w{10,}$/.test(token)) throw new Error(`no token shown: "${token}"`);
    await page.waitForSelector('tr[data-status="offline"] a:text-is("thermo-1")');
    await page.waitForSelector('#live-state.up');
    await shot(page, '04-device-created');
  });

  await step('the device turns online in the table without a reload', async () => {
    device = await Mqtt.connect({ host: mqttHost, port: mqttPort, ca, username: token });
    await page.waitForSelector('tr[data-status="online"] a:text-is("thermo-1")', { timeout: 15_000 });
    await shot(page, '05-device-online');
  });

  await step('telemetry shows on the chart', async () => {
    device.on('message', async (topic, payload) => {
      const m = topic.match(/^v1\/devices\/me\/rpc\/request\/(\d+)$/);
      if (!m) return;
      const req = JSON.parse(payload);
      rpcSeen.push(req);
      await device.publish(`v1/devices/me/rpc/response/${m[1]}`, JSON.stringify({ ok: true, method: req.method, echo: req.params }));
    });
    await device.subscribe('v1/devices/me/rpc/request/+');
    const now = Date.now();
    const points = Array.from({ length: 12 }, (_, i) => ({ ts: now - (11 - i) * 60_000, values: { temperature: 20 + Math.sin(i / 2) * 3, humidity: 40 + i } }));
    await device.publish('v1/devices/me/telemetry', JSON.stringify(points));
    await page.click('a:text-is("thermo-1")');
    await page.waitForSelector('#device-status .badge.online');
    await page.waitForFunction(() => Number(document.querySelector('#chart')?.dataset.points) >= 12, null, { timeout: 15_000 });
    await page.waitForSelector('#chart svg path.line');
    // A new point arrives live.
    await device.publish('v1/devices/me/telemetry', JSON.stringify({ temperature: 25.5, humidity: 55 }));
    await page.waitForFunction(() => Number(document.querySelector('#chart')?.dataset.points) >= 13, null, { timeout: 15_000 });
    await page.waitForSelector('#latest td.value:text-is("25.5")');
    await page.locator('#telemetry').screenshot({ path: join(artifacts, '06-telemetry-chart.png') });
  });

  await step('send a command and see the device\'s answer', async () => {
    await page.fill('#command-method', 'getStatus');
    await page.fill('#command-params', '{"verbose": true}');
    await page.click('#command-form button[type=submit]');
    await page.waitForSelector('#job-result [data-state="succeeded"]', { timeout: 20_000 });
    const result = await page.textContent('#job-result-value');
    if (!result.includes('"ok": true') || !result.includes('"verbose": true')) throw new Error(`unexpected result: ${result}`);
    if (!rpcSeen.some((r) => r.method === 'getStatus')) throw new Error('the device never got the command');
    await page.waitForSelector('#jobs-table tr[data-job-id] .badge.succeeded');
    await page.waitForSelector('#connections tr[data-event="connected"] td:text-is("mqtt-tls")');
    await page.locator('#jobs').screenshot({ path: join(artifacts, '07-command-result.png') });
    await shot(page, '08-device-page');
  });

  await step('telemetry by tag: a named tag has its own keys and chart', async () => {
    await device.publish('v1/devices/me/telemetry/power', JSON.stringify([{ ts: Date.now() - 120_000, values: { watts: 110 } }, { watts: 125 }]));
    await page.waitForSelector('#chart-tag option[value="power"]', { state: 'attached', timeout: 15_000 });
    await page.selectOption('#chart-tag', 'power');
    await page.waitForSelector('#chart-key option[value="watts"]', { state: 'attached' });
    await page.waitForFunction(() => Number(document.querySelector('#chart')?.dataset.points) === 2 && document.querySelector('#chart-count')?.textContent.includes('watts'));
    await page.waitForSelector('#latest td.value:text-is("125")');
    await page.selectOption('#chart-range', '7d'); // hourly rollups
    await page.waitForFunction(() => document.querySelector('#chart-count')?.textContent.includes('hourly average'));
    await page.locator('#telemetry').screenshot({ path: join(artifacts, '07b-telemetry-tag-rollups.png') });
    await page.selectOption('#chart-range', '1h');
    await page.selectOption('#chart-tag', 'default');
  });

  await step('device chart: opens on a numeric key, draws several series, downloads what it shows, tooltips, zoom and pan', async () => {
    // A text key that sorts first must not be what the chart opens on.
    await device.publish('v1/devices/me/telemetry', JSON.stringify({ a_state: 'idle' }));
    await page.waitForSelector('#latest th:text-is("a_state")', { timeout: 15_000 });
    await page.reload();
    await page.waitForSelector('#chart svg path.line');
    const key = await page.inputValue('#chart-key');
    if (key === 'a_state') throw new Error('the chart opened on a text key');
    if (await page.locator('#chart-series input[data-key="a_state"]').count()) throw new Error('a text key is offered as a series');
    const other = key === 'humidity' ? 'temperature' : 'humidity';
    await page.check(`#chart-series input[data-key="${other}"]`);
    await page.waitForFunction(() => document.querySelector('#chart')?.dataset.series === '2' && document.querySelectorAll('#chart svg path.line').length === 2);
    await page.waitForSelector(`#chart .legend li:text-is("${other}")`);
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#chart-csv')]);
    const csv = await readDownload(dl);
    const lines = csv.trim().split(/\r?\n/);
    if (lines[0] !== `time,${key},${other}`) throw new Error(`the CSV header is ${lines[0]}`);
    if (lines.length < 14) throw new Error(`the CSV has ${lines.length} lines`);
    const last = lines[lines.length - 1].split(',');
    const want = { temperature: '25.5', humidity: '55' };
    if (last[1] !== want[key] || last[2] !== want[other]) throw new Error(`the last row is ${lines[lines.length - 1]}`);
    await page.locator('#telemetry').screenshot({ path: join(artifacts, '06b-chart-two-series.png') });
    // Tooltips on the points; zoom and pan by button and by a drag; back to live.
    if (!(await page.locator('#chart svg .dots circle title').count())) throw new Error('the points have no tooltips');
    const span = async () => page.evaluate(() => { const c = document.querySelector('#chart'); return c.getAttribute('aria-busy') === 'false' ? Number(c.dataset.to) - Number(c.dataset.from) : -1; });
    const span0 = await span();
    await page.click('#chart-zoom-in');
    await page.waitForFunction((s0) => { const c = document.querySelector('#chart'); return c.getAttribute('aria-busy') === 'false' && Math.abs(Number(c.dataset.to) - Number(c.dataset.from) - s0 / 2) < 2000; }, span0);
    if (await page.getAttribute('#chart-live', 'aria-pressed') !== 'false') throw new Error('zoomed, the chart still says live');
    const to1 = Number(await page.getAttribute('#chart', 'data-to'));
    await page.click('#chart-earlier');
    await page.waitForFunction((t) => Number(document.querySelector('#chart').dataset.to) < t - 60000, to1);
    await page.click('#chart-live');
    await page.waitForFunction((s0) => Math.abs(Number(document.querySelector('#chart').dataset.to) - Number(document.querySelector('#chart').dataset.from) - s0) < 2000, span0);
    const box = await page.locator('#chart svg').boundingBox();
    await page.mouse.move(box.x + box.width * 0.55, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.95, box.y + box.height / 2, { steps: 4 });
    await page.mouse.up();
    await page.waitForFunction((s0) => { const c = document.querySelector('#chart'); return c.getAttribute('aria-busy') === 'false' && Number(c.dataset.to) - Number(c.dataset.from) < s0 * 0.6; }, span0);
    await page.waitForSelector('#chart-count:has-text(" from ")');
    await page.click('#chart-live');
    await page.waitForSelector('#chart-live[aria-pressed="true"]');
    await page.uncheck(`#chart-series input[data-key="${other}"]`);
  });

  await step('dashboard with every widget kind: a refusal at its field, values read back, live, zoom and pan, a map', async () => {
    const deviceUrl = page.url();
    await device.publish('v1/devices/me/telemetry', JSON.stringify({ latitude: 48.85, longitude: 2.35 }));
    await page.click('#nav a[href="#/dashboards"]');
    await page.waitForSelector('#dashboard-form');
    await page.fill('#dashboard-name', 'Boiler room');
    await page.selectOption('#dashboard-scope', { label: 'Plant / sensors' });
    await page.click('#dashboard-form button[type=submit]');
    await page.waitForSelector('#widget-form');
    const add = async (kind, title, fill = async () => {}) => {
      await page.selectOption('#widget-kind', kind);
      await page.fill('#widget-title', title);
      await fill();
      await page.click('#widget-form button[type=submit]');
      await page.waitForSelector(`#widget-list li:has-text("${title}")`);
    };
    await add('chart', 'Climate', async () => {
      await pickDevice(page, 'widget-devices', 'thermo-1');
      await page.fill('#widget-keys', 'temperature, humidity');
      await page.selectOption('#widget-agg', 'max');
      await page.selectOption('#widget-width', '4');
    });
    await add('value', 'Temperature now', async () => {
      await pickDevice(page, 'widget-device', 'thermo-1');
      await page.fill('#widget-key', 'temperature');
      await page.fill('#widget-unit', '°C');
    });
    await add('gauge', 'Humidity', async () => {
      await pickDevice(page, 'widget-device', 'thermo-1');
      await page.fill('#widget-key', 'humidity');
    });
    await add('table', 'Sensors', async () => { await page.fill('#widget-keys', 'temperature,humidity'); });
    await add('conditions', 'Alarms');
    await add('map', 'Where', async () => { await page.selectOption('#widget-width', '4'); });
    // The server's refusal shows at the form and names the widget and field.
    await add('gauge', 'Broken', async () => {
      await pickDevice(page, 'widget-device', 'thermo-1');
      await page.fill('#widget-key', 'humidity');
      await page.fill('#widget-min', '5');
      await page.fill('#widget-max', '1');
    });
    await page.click('#dashboard-save');
    await page.waitForSelector('#dashboard-error:has-text("widgets[6].max")');
    await page.click('button[aria-label="Remove Broken"]');
    // A widget changed in place: the card's unit.
    await page.click('button[aria-label="Edit Temperature now"]');
    if (await page.inputValue('#widget-key') !== 'temperature') throw new Error('the widget did not load into the form');
    await page.waitForSelector('#widget-device-chosen li:has-text("thermo-1")');
    await page.fill('#widget-unit', 'degC');
    await page.click('#widget-form button[type=submit]');
    await page.click('#dashboard-save');
    await page.waitForSelector('#dashboard-editor', { state: 'hidden' });
    dashboardHash = new URL(page.url()).hash.split('?')[0];
    // Each widget, read back.
    await page.waitForSelector('#widget-0 svg.chart path.line');
    const titles = await page.$$eval('#widget-0 svg .dots circle title', (ts) => ts.map((t) => t.textContent));
    if (!titles.some((t) => t.startsWith('thermo-1 · temperature') && t.endsWith(': 25.5'))) throw new Error(`the chart's points: ${titles.join(' | ')}`);
    if (!titles.some((t) => t.startsWith('thermo-1 · humidity') && t.endsWith(': 55'))) throw new Error(`no humidity series: ${titles.join(' | ')}`);
    if (await page.locator('#widget-0 svg path.line').count() !== 2) throw new Error('the chart does not draw two series');
    await page.waitForSelector('#widget-1 .stat-value:text-is("25.5")');
    await page.waitForSelector('#widget-1 .unit:text-is(" degC")');
    if (await page.locator('#dashboard-grid article.widget').count() !== 6) throw new Error('editing a widget changed the count');
    await page.waitForSelector('#widget-2 svg.gauge[data-value="55"]');
    await page.waitForSelector('#widget-3 td[data-key="temperature"]:text-is("25.5")');
    await page.waitForSelector('#widget-4 td:text-is("No open conditions.")');
    await page.waitForSelector('#widget-5 svg.map path.land');
    await page.waitForSelector('#widget-5 circle.marker.online');
    await shot(page, '06c-dashboard');
    // Live: a new value reaches the card and the gauge without a reload.
    await device.publish('v1/devices/me/telemetry', JSON.stringify({ temperature: 31.5, humidity: 60 }));
    await page.waitForSelector('#widget-1 .stat-value:text-is("31.5")', { timeout: 15_000 });
    await page.waitForSelector('#widget-2 svg.gauge[data-value="60"]');
    // Zoom and pan the shared window; back to live.
    await page.click('#dash-zoom-in');
    await page.waitForSelector('#dashboard-range:has-text("(30 min)")');
    await page.click('#dash-earlier');
    await page.waitForSelector('#dash-live[aria-pressed="false"]');
    await page.click('#dash-later');
    await page.click('#dash-live');
    await page.waitForSelector('#dash-live[aria-pressed="true"]');
    await page.waitForSelector('#dashboard-range:has-text("(60 min)")');
    // Stored on the server: a reload draws the same widgets.
    await page.reload();
    await page.waitForSelector('#widget-5 svg.map');
    if (await page.locator('#dashboard-grid article.widget').count() !== 6) throw new Error('the saved dashboard does not have 6 widgets');
    await page.goto(deviceUrl);
    await page.waitForSelector('#shared-key');
  });

  await step('shared attribute edit reaches the device page', async () => {
    await page.fill('#shared-key', 'target_temp');
    await page.fill('#shared-value', '21.5');
    await page.click('#shared-form button[type=submit]');
    await page.waitForSelector('#attributes th:text-is("target_temp")');
  });

  await step('the device page shows its connection trace, and makes a device a gateway and back, checked on the server', async () => {
    await page.waitForSelector('#device-trace tr[data-event="connected"]');
    await page.waitForSelector('#device-gateway:has-text("an ordinary device")');
    await page.click('#toggle-gateway');
    await page.waitForSelector('#device-gateway:has-text("a gateway")');
    const id = new URL(page.url()).hash.split('/')[2].split('?')[0];
    const d = await rest('GET', `/devices/${id}`);
    if (d.gateway?.role !== 'gateway') throw new Error(`the server has ${JSON.stringify(d.gateway)}`);
    await page.click('#toggle-gateway');
    await page.waitForSelector('#device-gateway:has-text("an ordinary device")');
  });

  await step('credentials: issue a certificate, download it, revoke it', async () => {
    await page.selectOption('#credential-type', 'issued_certificate');
    await page.click('#credentials form button[type=submit]');
    await page.waitForSelector('#credential-issued button:text-is("Download private key")');
    const [keyFile] = await Promise.all([page.waitForEvent('download'), page.click('#credential-issued button:text-is("Download private key")')]);
    const keyText = await readDownload(keyFile);
    if (keyFile.suggestedFilename() !== 'thermo-1.key' || !keyText.includes('PRIVATE KEY')) throw new Error(`bad key download ${keyFile.suggestedFilename()}`);
    const row = page.locator('#credentials tr', { hasText: 'certificate' }).first();
    const [bundle] = await Promise.all([page.waitForEvent('download'), row.locator('button:text-is("Download certificate + CA")').click()]);
    const pem = await readDownload(bundle);
    if ((pem.match(/BEGIN CERTIFICATE/g) || []).length !== 2) throw new Error('the bundle should hold the certificate and the CA');
    page.once('dialog', (d) => d.accept());
    await row.locator('button:text-is("Revoke")').click();
    await page.waitForSelector('#credentials tr:has-text("certificate") .badge.revoked');
    await page.waitForSelector('#device-status .badge.online'); // the token session is untouched
    await page.locator('#credentials').screenshot({ path: join(artifacts, '07c-credentials.png') });
  });

  await step('conditions: the device reports one; a viewer is refused, the operator acknowledges and closes it', async () => {
    // The device's side: the HTTP device API, authenticated by its access token.
    const report = async (body) => {
      const r = await fetch(`${base}/api/v1/${token}/conditions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      if (!r.ok) throw new Error(`device report: HTTP ${r.status} ${await r.text()}`);
    };
    // The device page is open: the condition appears there live.
    await page.waitForSelector('#device-conditions td:text-is("No conditions reported.")');
    await report({ name: 'overheat', action: 'open', severity: 'critical', details: { temp: 97 } });
    await page.waitForSelector('#device-conditions tr[data-state="open"][data-severity="critical"] th:text-is("overheat")', { timeout: 15_000 });
    await page.locator('#conditions').screenshot({ path: join(artifacts, '08b-device-conditions.png') });
    // The overview counts it, and the count leads to the conditions page.
    await page.click('#nav a[href="#/"]');
    await page.waitForSelector('#stat-conditions');
    const open = Number((await page.textContent('#stat-conditions .stat-value')).trim());
    if (!(open >= 1)) throw new Error(`the overview shows ${open} open conditions`);
    await page.click('#stat-conditions');
    await page.waitForSelector('main h1:has-text("Conditions")');
    const row = page.locator('#conditions-table tr', { has: page.locator('th:text-is("overheat")') });
    await row.locator('.badge.severity-critical:text-is("critical")').waitFor();
    await row.locator('a:text-is("thermo-1")').waitFor();
    await page.waitForSelector('#live-state.up');

    // A viewer, on a phone: the list fits the screen, and says why it offers her no actions
    // (a refusal by the server is checked with a demoted operator below).
    const fleet = (await rest('GET', '/fleets?name=sensors')).items[0];
    await rest('POST', '/users', { username: 'vera', display_name: 'Vera Viewer', password: 'a viewer password', admin: false, grants: [{ workspace_id: fleet.workspace_id, role: 'viewer', fleets: null }] });
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    try {
      const p = await phone.newPage();
      p.setDefaultTimeout(STEP_MS);
      guard(p, problems);
      await p.goto(`${base}/#/conditions`);
      await p.waitForSelector('#login-form');
      await p.fill('#login-username', 'vera');
      await p.fill('#login-password', 'a viewer password');
      await p.click('#login-form button[type=submit]');
      await p.waitForSelector('#conditions-table th:text-is("overheat")');
      const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      if (overflow > 1) throw new Error(`the conditions page is ${overflow} px wider than the screen`);
      await p.waitForSelector('#conditions-table tr[data-acknowledged="no"] [data-needs="operator"]');
      if (await p.locator('#conditions-table button').count()) throw new Error('a viewer is offered Acknowledge or Close');
      // The server is the authority: the same request, with her session and its CSRF token.
      const refused = await p.evaluate(async (id) => {
        const { csrf_token: csrf } = await (await fetch('/api/v1/auth/me')).json();
        const r = await fetch(`/api/v1/conditions/${id}/acknowledge`, { method: 'POST', headers: { 'X-CSRF-Token': csrf } });
        return `${r.status} ${(await r.json()).error?.code}`;
      }, await p.getAttribute('#conditions-table tr[data-acknowledged="no"]', 'data-condition-id'));
      if (refused !== '403 forbidden') throw new Error(`a viewer's acknowledge: ${refused}`);
      await shot(p, '16b-phone-conditions-viewer');
    } finally {
      await phone.close();
    }

    // The operator (here the admin) acknowledges, then closes it: the row says so each time.
    await row.locator('button:text-is("Acknowledge")').click();
    await page.waitForSelector('#conditions-table tr[data-acknowledged="yes"][data-state="open"] th:text-is("overheat")');
    await row.locator(`td.ack-cell:has-text("${ADMIN.username}")`).waitFor();
    if (await row.locator('button:text-is("Acknowledge")').count()) throw new Error('an acknowledged condition still offers Acknowledge');
    await shot(page, '16-conditions-acknowledged');
    await row.locator('button:text-is("Close")').click();
    await page.waitForSelector('#conditions-table tr[data-state="closed"] th:text-is("overheat")');
    await row.locator(`td.state-cell:has-text("by ${ADMIN.username}")`).waitFor();
    if (await row.locator('button').count()) throw new Error('a closed condition still offers actions');
    // Live: the device opens another, which appears without a reload, then closes it itself.
    await report({ name: 'battery_low', action: 'open', severity: 'minor', details: { level: 7 } });
    await page.waitForSelector('#conditions-table tr[data-state="open"][data-severity="minor"] th:text-is("battery_low")', { timeout: 15_000 });
    await report({ name: 'battery_low', action: 'close' });
    await page.waitForSelector('#conditions-table tr[data-state="closed"] th:text-is("battery_low")', { timeout: 15_000 });
    // Filters run on the server: both closed ones under "closed", only the critical one by severity.
    await page.selectOption('#conditions-state', 'closed');
    await page.waitForSelector('#conditions-count:text("2 closed conditions")');
    await page.selectOption('#conditions-severity', 'critical');
    await page.waitForSelector('#conditions-count:text("1 closed condition")');
    await page.waitForSelector('#conditions-table th:text-is("overheat")');
    if (!page.url().includes('state=closed') || !page.url().includes('severity=critical')) throw new Error(`filters are not in the address: ${page.url()}`);
    await shot(page, '16c-conditions-closed');
  });

  await step('jobs page: a fleet rollout and a schedule', async () => {
    await page.goto(`${base}/#/jobs`);
    await page.waitForSelector('#fleet-job-form');
    await page.fill('#fleet-job-form [name=method]', 'blink');
    await page.click('#fleet-job-form button[type=submit]');
    await page.waitForSelector('#fleet-jobs td:text-is("blink")');
    await page.fill('#schedule-name', 'nightly');
    await page.fill('#schedule-method', 'selfTest');
    await page.fill('#schedule-cron', '30 2 * * *');
    await page.click('#schedule-form button[type=submit]');
    await page.waitForSelector('#schedules td:text-is("nightly")');
    await page.click('#schedules button:text-is("Disable")');
    await page.waitForSelector('#schedules button:text-is("Enable")');
    await shot(page, '09a-jobs');
  });

  await step('the other pages render', async () => {
    for (const [hash, sel] of [['#/jobs', '#fleet-jobs'], ['#/integrations', '#integrations-body'], ['#/users', '#users-body'], ['#/audit', '#audit-table table'], ['#/', '#stat-online']]) {
      await page.goto(`${base}/${hash}`);
      await page.waitForSelector(sel);
      await page.waitForFunction((s) => !document.querySelector(s)?.textContent.includes('Loading'), sel);
      await shot(page, `09-page-${hash.replace(/[#/]/g, '') || 'overview'}`);
    }
    const online = await page.textContent('#stat-online .stat-value');
    if (online.trim() !== '1') throw new Error(`overview shows ${online} online`);
    // No integration yet: the page says so.
    await page.goto(`${base}/#/integrations`);
    await page.waitForSelector('#integrations-body td:has-text("No integrations yet")');
    await page.click('#nav a[href="#/"]');
    await page.waitForSelector('#stat-online');
  });

  await step('devices table: server-side paging and search', async () => {
    const fleet = (await rest('GET', '/fleets?name=sensors')).items[0];
    const names = Array.from({ length: 120 }, (_, i) => `bulk-${String(i).padStart(3, '0')}`);
    for (let i = 0; i < names.length; i += 10) {
      await Promise.all(names.slice(i, i + 10).map((name) => rest('POST', '/devices', { fleet_id: fleet.id, name })));
    }
    await page.goto(`${base}/#/devices`);
    await page.waitForSelector('#page-info:text("Page 1 of 3 · 50 devices")');
    if (await page.isDisabled('#page-next')) throw new Error('no next page with 121 devices');
    await page.click('#page-next');
    await page.waitForSelector('#page-info:text("Page 2 of 3 · 50 devices")');
    await page.click('#page-next');
    await page.waitForSelector('#page-info:text("Page 3 of 3 · 21 devices")');
    if (!(await page.isDisabled('#page-next'))) throw new Error('a fourth page is offered');
    await page.click('#page-prev');
    await page.waitForSelector('#page-info:text("Page 2 of 3 · 50 devices")');
    await page.fill('#device-search', 'bulk-11');
    await page.waitForSelector('#page-info:text("Page 1 of 1 · 10 devices")');
    await page.fill('#device-search', '');
    await page.selectOption('#device-status', 'online');
    await page.waitForSelector('#page-info:text("Page 1 of 1 · 1 device")');
    await page.waitForSelector('tr[data-status="online"] a:text-is("thermo-1")');
    if (!page.url().includes('status=online')) throw new Error(`filters are not in the address: ${page.url()}`);
    await shot(page, '09b-devices-filtered');
    await page.selectOption('#device-status', '');
    await page.waitForSelector('#page-info:text("Page 1 of 3 · 50 devices")');
  });

  await step('devices table: sorting, a bulk action checked on the server, CSV import with bad rows, export', async () => {
    const fleet = (await rest('GET', '/fleets?name=sensors')).items[0];
    await page.goto(`${base}/#/devices`);
    await page.waitForSelector('#page-info:text("Page 1 of 3")');
    await page.waitForSelector('#device-count:text("121 devices")');
    // Sort by name, then the other way: the order comes from the server, kept in the address.
    await page.click('th button[data-sort="name"]');
    await page.waitForSelector('th[aria-sort="ascending"] button[data-sort="name"]');
    await page.waitForSelector('tbody tr:first-child th a:text-is("bulk-000")');
    await page.click('th button[data-sort="name"]');
    await page.waitForSelector('tbody tr:first-child th a:text-is("thermo-1")');
    if (!page.url().includes('sort=name') || !page.url().includes('order=desc')) throw new Error(`the sort is not in the address: ${page.url()}`);
    // A page's selection, labelled in one request after a confirmation that says how many.
    await page.fill('#device-search', 'bulk-01');
    await page.waitForSelector('#page-info:text("Page 1 of 1 · 10 devices")');
    await page.check('#select-page');
    await page.waitForSelector('#selection-info:text("10 devices selected.")');
    await page.selectOption('#bulk-action', 'label');
    await page.fill('#bulk-label', 'batch-7');
    await page.click('#bulk-apply');
    await page.waitForSelector('#bulk-dialog[open] #bulk-confirm-text:text("Set label: 10 devices will be affected.")');
    await shot(page, '09c-bulk-confirm');
    await page.click('#bulk-confirm');
    await page.waitForSelector('#bulk-summary:text("Set label: 10 done, 0 failed.")');
    const labelled = await rest('GET', '/devices?name=bulk-01&limit=100');
    if (labelled.total !== 10 || labelled.items.some((d) => d.label !== 'batch-7')) throw new Error(`the server has ${JSON.stringify(labelled.items.map((d) => d.label))}`);
    // Every device the filter matches (not only this page): shared attributes on each.
    await page.fill('#device-search', 'bulk-1');
    await page.waitForSelector('#device-count:text("20 devices match")');
    await page.click('#select-all-matching');
    await page.waitForSelector('#selection-info:text("All 20 matching devices selected.")');
    await page.selectOption('#bulk-action', 'set_shared');
    await page.fill('#bulk-values', '{"report_every": 15}');
    await page.click('#bulk-apply');
    await page.waitForSelector('#bulk-confirm-text:text("20 devices will be affected")');
    await page.click('#bulk-confirm');
    await page.waitForSelector('#bulk-summary:text("20 done")');
    const some = (await rest('GET', '/devices?name=bulk-119')).items[0];
    const attrs = await rest('GET', `/devices/${some.id}/attributes`);
    if (!JSON.stringify(attrs).includes('report_every')) throw new Error(`no shared attribute on the server: ${JSON.stringify(attrs)}`);
    // Export the filtered list as CSV.
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#devices-export')]);
    const csv = await readDownload(dl);
    const lines = csv.trim().split(/\r?\n/);
    if (!lines[0].startsWith('name,label,fleet,id,status') || lines.length !== 21) throw new Error(`the export has ${lines.length} lines: ${lines[0]}`);
    // Import: a dry run names every bad row and changes nothing, then a clean file imports.
    await page.fill('#device-search', '');
    await page.click('#import-devices summary');
    await page.selectOption('#import-fleet', fleet.id);
    await page.fill('#import-csv', 'name,label,token,shared:interval\ncsv-1,roof,,30\n,no name,,\nbulk-000,taken,,\ncsv-2,,bad token,\ncsv-3,short\ncsv-4,cellar,,\n');
    await page.click('#import-check');
    await page.waitForSelector('#import-summary:text("Dry run: 2 of 6 rows can be imported; nothing was changed.")');
    for (const line of [3, 4, 5, 6]) await page.waitForSelector(`#import-errors tr[data-line="${line}"]`);
    await shot(page, '09d-import-dry-run');
    if ((await rest('GET', '/devices?name=csv-')).total !== 0) throw new Error('a dry run created devices');
    await page.click('#import-run');
    await page.waitForSelector('#import-report .notice.error:has-text("invalid_rows")');
    await page.fill('#import-csv', 'name,label,token,shared:interval\ncsv-1,roof,,30\ncsv-4,cellar,,\n');
    await page.click('#import-run');
    await page.waitForSelector('#import-summary:text("Imported 2 devices.")');
    await page.waitForSelector('#import-tokens');
    const imported = await rest('GET', '/devices?name=csv-&sort=name');
    if (imported.total !== 2 || imported.items[0].label !== 'roof' || imported.items[0].fleet_id !== fleet.id) throw new Error(`imported: ${JSON.stringify(imported.items)}`);
    // Fleet health on the overview: each figure opens the list it counts.
    await page.goto(`${base}/#/`);
    const total = page.locator(`#fleet-health tr[data-fleet-id="${fleet.id}"] td[data-col="total"] a`);
    await total.waitFor();
    const n = (await total.textContent()).trim();
    const silent = await page.locator('#stat-silent').getAttribute('href');
    if (!silent || !silent.includes('silent_mins=')) throw new Error(`the silent figure links to ${silent}`);
    await shot(page, '09e-fleet-health');
    await total.click();
    await page.waitForSelector(`#device-count:text("${n} devices match")`);
    if (!page.url().includes(`fleet_id=${fleet.id}`)) throw new Error(`the fleet's figure opened ${page.url()}`);
  });

  await step('fleet settings: provisioning that works, a manufacturer CA, shared defaults', async () => {
    const fleet = (await rest('GET', '/fleets?name=sensors')).items[0];
    await page.goto(`${base}/#/fleets`);
    await page.click('a[data-fleet-settings="sensors"]');
    await page.waitForSelector('main h1:text-is("Fleet sensors")');
    await page.waitForSelector('#provisioning-state[data-enabled="no"]');
    // Provisioning: enabled with a generated key and secret; the secret is shown this once.
    await page.selectOption('#provisioning-strategy', 'allow_create_new_devices');
    await page.click('#provisioning-form button[type=submit]');
    await page.waitForSelector('#provisioning-state[data-enabled="yes"]');
    const secret = await page.inputValue('#provisioning-secret input.secret');
    const key = (await page.textContent('#provisioning-new-key')).trim();
    if (!/^\S{8,}$/.test(secret) || !/^\S{8,}$/.test(key)) throw new Error(`no key and secret shown: "${key}", "${secret}"`);
    if ((await page.textContent('#provisioning-key-now')).trim() !== key) throw new Error('the provisioning key shown is not the one set');
    await page.waitForSelector('#provisioning-secret:has-text("Copy it now")');
    await page.locator('#provisioning').screenshot({ path: join(artifacts, '17-fleet-provisioning.png') });
    // A device provisions itself with them, the way docs/identity.md documents it.
    const r = await fetch(`${base}/api/v1/provision`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ deviceName: 'self-registered-1', provisionDeviceKey: key, provisionDeviceSecret: secret }),
    });
    const prov = await r.json();
    if (prov.status !== 'SUCCESS' || prov.credentialsType !== 'ACCESS_TOKEN' || !prov.credentialsValue) throw new Error(`provisioning: ${JSON.stringify(prov)}`);
    const wrong = await (await fetch(`${base}/api/v1/provision`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ deviceName: 'self-registered-2', provisionDeviceKey: key, provisionDeviceSecret: 'not the secret' }),
    })).json();
    if (wrong.status === 'SUCCESS') throw new Error('a wrong secret provisioned a device');
    // Read again, the page shows the key but the secret nowhere.
    await page.reload();
    await page.waitForSelector('#provisioning-state[data-enabled="yes"]');
    const leaks = await page.evaluate((s) => document.documentElement.outerHTML.includes(s)
      || [...document.querySelectorAll('input, textarea')].some((el) => el.value.includes(s))
      || Object.values(sessionStorage).concat(Object.values(localStorage)).some((v) => String(v).includes(s)), secret);
    if (leaks) throw new Error('the provisioning secret is shown again');
    await page.click('#fleet-devices-link');
    await page.waitForSelector('a:text-is("thermo-1")');
    await page.fill('#device-search', 'self-registered');
    await page.waitForSelector('#page-info:text("Page 1 of 1 · 1 device")');
    await page.waitForSelector('tr a:text-is("self-registered-1")');
    await page.goto(`${base}/#/fleets/${fleet.id}`);
    await page.waitForSelector('#manufacturer-cas td:text-is("No manufacturer CAs.")');

    // A manufacturer CA, pasted; the same one again from a file is refused with the server's reason.
    const caDir = mkdtempSync(join(tmpdir(), 'corral-ui-ca-'));
    let caPem;
    let caFile;
    let fingerprint = null;
    try {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
        '-keyout', join(caDir, 'ca.key'), '-out', join(caDir, 'ca.pem'), '-days', '30', '-subj', '/CN=Acme Devices Test CA',
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: 'pipe' });
      caFile = join(caDir, 'ca.pem');
      caPem = readFileSync(caFile, 'utf8');
      fingerprint = execFileSync('openssl', ['x509', '-in', caFile, '-noout', '-fingerprint', '-sha256'], { encoding: 'utf8' }).split('=')[1].trim();
    } catch {
      // No openssl: Corral's own CA is a CA certificate too.
      console.log('# no openssl: registering the server\'s CA as the manufacturer CA');
      caPem = ca;
      caFile = join(caDir, 'ca.pem');
      writeFileSync(caFile, ca);
    }
    try {
      await page.fill('#ca-name', 'Acme');
      await page.fill('#ca-pem', caPem);
      await page.click('#ca-form button[type=submit]');
      const caRow = page.locator('#manufacturer-cas tr', { has: page.locator('th:text-is("Acme")') });
      await caRow.waitFor();
      if (fingerprint && (await caRow.locator('code.fingerprint').textContent()).trim() !== fingerprint) throw new Error('the fingerprint shown is not the certificate\'s');
      if (fingerprint) await caRow.locator('td:has-text("Acme Devices Test CA")').waitFor();
      await page.setInputFiles('#ca-file', caFile);
      await page.waitForFunction(() => document.getElementById('ca-pem').value.includes('BEGIN CERTIFICATE'));
      await page.click('#ca-form button[type=submit]');
      await page.waitForSelector('#toast.error:has-text("already registered")');
      await page.locator('#manufacturer-cas').screenshot({ path: join(artifacts, '18-fleet-manufacturer-ca.png') });
      page.once('dialog', (d) => d.accept());
      await page.click('#manufacturer-cas button[aria-label="Delete CA Acme"]');
      await page.waitForSelector('#manufacturer-cas td:text-is("No manufacturer CAs.")');
      if ((await rest('GET', `/fleets/${fleet.id}/cas`)).length !== 0) throw new Error('the CA is still registered');
    } finally {
      rmSync(caDir, { recursive: true, force: true });
    }

    // A shared default: set, edited as JSON, then what a device of the fleet gets.
    await page.fill('#default-key', 'report_interval');
    await page.fill('#default-value', '60');
    await page.click('#defaults-form button[type=submit]');
    await page.waitForSelector('#fleet-defaults tr[data-key="report_interval"] code:text-is("60")');
    await page.click('#fleet-defaults button[aria-label="Edit default report_interval"]');
    if ((await page.inputValue('#default-key')) !== 'report_interval') throw new Error('Edit does not fill in the key');
    await page.fill('#default-value', '{"seconds": 30, "jitter": true}');
    await page.click('#defaults-form button[type=submit]');
    await page.waitForFunction(() => {
      try {
        const v = JSON.parse(document.querySelector('#fleet-defaults tr[data-key="report_interval"] code')?.textContent);
        return v.seconds === 30 && v.jitter === true;
      } catch { return false; }
    });
    const defaults = await rest('GET', `/fleets/${fleet.id}/attributes/shared`);
    const value = defaults.report_interval?.value;
    if (value?.seconds !== 30 || value?.jitter !== true) throw new Error(`fleet defaults: ${JSON.stringify(defaults)}`);
    const got = await (await fetch(`${base}/api/v1/${prov.credentialsValue}/attributes?sharedKeys=report_interval`)).json();
    if (got.shared?.report_interval?.seconds !== 30) throw new Error(`the provisioned device gets ${JSON.stringify(got)}`);
    await page.locator('#fleet-defaults').screenshot({ path: join(artifacts, '19-fleet-defaults.png') });
    await shot(page, '19b-fleet-page');
    // The device page says where the value comes from.
    await page.goto(`${base}/#/devices?fleet_id=${fleet.id}`);
    await page.click('a:text-is("thermo-1")');
    await page.waitForSelector('#attributes tr[data-key="report_interval"][data-from-fleet="yes"] a:text-is("fleet default")');
    await page.waitForSelector('#attributes tr[data-key="target_temp"]:not([data-from-fleet])');

    // On a phone, the fleet page fits the screen.
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    try {
      const p = await phone.newPage();
      p.setDefaultTimeout(STEP_MS);
      guard(p, problems);
      await signInWithKey(p, base, adminKey);
      await p.goto(`${base}/#/fleets/${fleet.id}`);
      await p.waitForSelector('#provisioning-form');
      await p.waitForSelector('#fleet-defaults tr[data-key="report_interval"]');
      const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      if (overflow > 1) throw new Error(`the fleet page is ${overflow} px wider than the screen`);
      await shot(p, '19c-phone-fleet');
    } finally {
      await phone.close();
    }
  });

  await step('packages: upload with a progress bar, refusals shown, a fleet target, delete refused while assigned', async () => {
    const fleet = (await rest('GET', '/fleets?name=sensors')).items[0];
    const dir = mkdtempSync(join(tmpdir(), 'corral-ui-pkg-'));
    const sha256 = (b) => createHash('sha256').update(b).digest('hex');
    try {
      const fw = randomBytes(900 * 1024);
      const fwFile = join(dir, 'thermo-fw-1.0.1.bin');
      writeFileSync(fwFile, fw);
      await page.click('#nav a[href="#/packages"]');
      await page.waitForSelector('main h1:text-is("Packages")');
      await page.waitForSelector('#packages-list td:text-is("No packages yet.")');
      await page.waitForSelector('#package-upload-form small:has-text("unreliable with the ThingsBoard SDK")');
      // Every state and value the progress bar goes through.
      await page.evaluate(() => {
        window.uploadSeen = [];
        const box = document.getElementById('upload-progress-box');
        const bar = document.getElementById('upload-progress');
        new MutationObserver(() => window.uploadSeen.push([box.dataset.state, Number(bar.value), Number(bar.max)]))
          .observe(box, { attributes: true, subtree: true });
      });
      await page.setInputFiles('#package-file', fwFile);
      if ((await page.inputValue('#package-file-name')) !== 'thermo-fw-1.0.1.bin') throw new Error('the file name is not taken from the chosen file');
      if ((await page.inputValue('#package-checksum')) !== 'SHA256') throw new Error('SHA256 is not the default checksum');
      await page.fill('#package-title', 'thermo-fw');
      await page.fill('#package-version', '1.0.1');
      await page.selectOption('#package-type', 'firmware');
      await page.selectOption('#package-fleet', fleet.id);
      await page.click('#package-upload-form button[type=submit]');
      await page.waitForSelector('#upload-progress-box[data-state="done"]');
      await page.waitForSelector('#upload-done:has-text("Package thermo-fw 1.0.1 uploaded (900 KiB).")');
      const seen = await page.evaluate(() => window.uploadSeen);
      const [, value, max] = seen[seen.length - 1];
      if (value !== fw.length || max !== fw.length) throw new Error(`the bar ends at ${value} of ${max}`);
      if (!seen.some(([st, v]) => st === 'sending' && v === 0)) throw new Error(`the bar did not start at 0: ${JSON.stringify(seen)}`);
      if (!seen.some(([st, v]) => st === 'storing' && v === fw.length)) throw new Error(`no progress event reported the whole file sent: ${JSON.stringify(seen)}`);
      if (!(await page.textContent('#upload-progress-text')).includes('900 KiB of 900 KiB (100%)')) throw new Error('the progress text does not say 100%');
      const row = page.locator('#packages-list tr[data-title="thermo-fw"][data-version="1.0.1"]');
      await row.locator('td a:text-is("sensors")').waitFor();
      await row.locator('td .size:text-is("900 KiB")').waitFor();
      const [stored] = await rest('GET', '/packages?title=thermo-fw');
      if (stored.sha256 !== sha256(fw) || stored.size !== fw.length || stored.file_name !== 'thermo-fw-1.0.1.bin') throw new Error(`stored: ${JSON.stringify(stored)}`);
      if ((await row.locator('code.checksum').getAttribute('title')) !== stored.checksum) throw new Error('the full checksum is not on the short one');
      // The details: the full SHA-256; the download is the file uploaded.
      await row.locator('button[aria-expanded="false"]').click();
      const details = page.locator(`#packages-list tr.package-details[data-package-id="${stored.id}"]`);
      await details.locator(`code.package-sha256:text-is("${stored.sha256}")`).waitFor();
      const [dl] = await Promise.all([page.waitForEvent('download'), row.locator('a:text-is("Download")').click()]);
      if (dl.suggestedFilename() !== 'thermo-fw-1.0.1.bin' || sha256(readFileSync(await dl.path())) !== stored.sha256) throw new Error('the download is not the file uploaded');
      await shot(page, '22-packages-uploaded');

      // The same type, title and version again: the server's refusal, in the form.
      await page.setInputFiles('#package-file', fwFile);
      await page.fill('#package-title', 'thermo-fw');
      await page.fill('#package-version', '1.0.1');
      await page.click('#package-upload-form button[type=submit]');
      await page.waitForSelector('#upload-result .notice.error:has-text("already exists (name_taken)")');
      await page.waitForSelector('#upload-result .upload-hint:has-text("give a new version")');
      await page.waitForSelector('#upload-progress-box[data-state="failed"]');
      // Over the server's cap (1 MiB in this suite): said so, whether the server's 413 arrives
      // before it closes the connection or not.
      const big = join(dir, 'too-big.bin');
      writeFileSync(big, randomBytes(1536 * 1024));
      await page.setInputFiles('#package-file', big);
      await page.fill('#package-title', 'too-big');
      await page.fill('#package-version', '1');
      await page.click('#package-upload-form button[type=submit]');
      await page.waitForSelector('#upload-result .upload-hint:has-text("max_package_mb")');
      console.log(`# oversized upload: ${(await page.textContent('#upload-result')).slice(0, 160)}`);
      if ((await rest('GET', '/packages?title=too-big')).length) throw new Error('the oversized package was stored');
      // A CRC32 checksum: the server's warning is shown.
      const app = join(dir, 'thermo-app.tar');
      writeFileSync(app, randomBytes(4096));
      await page.setInputFiles('#package-file', app);
      await page.fill('#package-title', 'thermo-app');
      await page.fill('#package-version', '2.0');
      await page.selectOption('#package-type', 'software');
      await page.selectOption('#package-fleet', '');
      await page.selectOption('#package-checksum', 'CRC32');
      await page.click('#package-upload-form button[type=submit]');
      await page.waitForSelector('#upload-done:has-text("thermo-app 2.0 uploaded")');
      await page.waitForSelector('#upload-result .upload-warning:has-text("about 1 image in 256 fails its check")');
      await page.waitForSelector('#packages-list tr[data-title="thermo-app"] td:has-text("all fleets")');
      await page.waitForSelector('#packages-list tr[data-title="thermo-app"] .badge:text-is("warning")');
      // Filtered by type on the server.
      await page.selectOption('#packages-type', 'software');
      await page.waitForSelector('#packages-count:text-is("1 package")');
      if (await page.locator('#packages-list tr[data-title="thermo-fw"]').count()) throw new Error('the software filter shows firmware');
      if (!page.url().includes('type=software')) throw new Error(`the filter is not in the address: ${page.url()}`);
      await page.selectOption('#packages-type', '');
      await page.waitForSelector('#packages-count:text-is("2 packages")');

      // The fleet's target: assigned on the fleet page, where it shows as the firmware.
      await page.goto(`${base}/#/fleets/${fleet.id}`);
      await page.waitForSelector('#fleet-target-firmware[data-assigned="no"]');
      await page.selectOption('#assign-firmware', { label: 'thermo-fw 1.0.1' });
      page.once('dialog', (d) => d.accept());
      await page.click('#assign-firmware-form button[type=submit]');
      await page.waitForSelector('#fleet-target-firmware[data-assigned="yes"][data-title="thermo-fw"][data-version="1.0.1"] .target-name a:text-is("thermo-fw 1.0.1")');
      await page.waitForSelector('#fleet-target-software[data-assigned="no"]');
      const attrs = await rest('GET', `/fleets/${fleet.id}/attributes/shared`);
      if (attrs.fw_title?.value !== 'thermo-fw' || attrs.fw_version?.value !== '1.0.1' || attrs.fw_checksum?.value !== stored.checksum) throw new Error(`fleet attributes: ${JSON.stringify(attrs)}`);
      await page.locator('#fleet-packages').screenshot({ path: join(artifacts, '23-fleet-target.png') });

      // Deleting it is refused while the fleet targets it: the server's reason, and the way to the fleet.
      await page.goto(`${base}/#/packages`);
      page.once('dialog', (d) => d.accept());
      await page.click('#packages-list button[aria-label="Delete thermo-fw 1.0.1"]');
      await details.locator('.notice.error:has-text("has this package as its firmware target: unassign it first (conflict)")').waitFor();
      await details.locator('a.package-fleet-link:text-is("Unassign it on the page of fleet sensors.")').waitFor();
      await row.waitFor();
      await shot(page, '24-package-delete-refused');
      await details.locator('a.package-fleet-link').click();
      await page.waitForSelector('#fleet-target-firmware[data-assigned="yes"]');
      page.once('dialog', (d) => d.accept());
      await page.click('#unassign-firmware');
      await page.waitForSelector('#fleet-target-firmware[data-assigned="no"] .target-none:text-is("No firmware assigned.")');
      if ((await rest('GET', `/fleets/${fleet.id}/attributes/shared`)).fw_title) throw new Error('fw_title is still set');
      // Now the delete goes through.
      await page.goto(`${base}/#/packages`);
      await row.waitFor();
      page.once('dialog', (d) => d.accept());
      await page.click('#packages-list button[aria-label="Delete thermo-fw 1.0.1"]');
      await row.waitFor({ state: 'detached' });
      await page.waitForSelector('#packages-count:text-is("1 package")');
      const gone = await fetch(`${base}/api/v1/packages/${stored.id}`, { headers: { Authorization: `Bearer ${adminKey}` } });
      if (gone.status !== 404) throw new Error(`the deleted package answers ${gone.status}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  let campaign; // the campaign run below, which the viewer then reads
  await step('OTA campaign from the UI: preview, refusals at their field, approval, waves, simulated devices to the end', async () => {
    const ws = (await rest('GET', '/fleets?name=sensors')).items[0].workspace_id;
    const fleet = await rest('POST', '/fleets', { workspace_id: ws, name: 'ota' });
    const tokens = new Map();
    for (const name of ['ota-a', 'ota-b', 'ota-c']) {
      const r = await rest('POST', '/devices', { fleet_id: fleet.id, name });
      tokens.set(name, r.credentials.token);
    }
    const dir = mkdtempSync(join(tmpdir(), 'corral-ui-ota-'));
    const simLog = [];
    try {
      const fwFile = join(dir, 'thermo-ota-2.0.bin');
      writeFileSync(fwFile, randomBytes(40 * 1024));
      await uploadPackage(page, base, rest, { file: fwFile, title: 'thermo-ota', version: '2.0', fleetId: fleet.id });

      // "Roll out" on the package's row opens the form with the package and its fleet chosen.
      await page.waitForSelector('#packages-list tr[data-title="thermo-ota"]');
      await page.click('#packages-list a[aria-label="Roll out thermo-ota 2.0"]');
      await page.waitForSelector('main h1:text-is("New campaign")');
      await page.waitForFunction(() => document.querySelector('#campaign-package')?.selectedOptions[0]?.textContent.startsWith('thermo-ota 2.0'));
      if ((await page.inputValue('#campaign-fleet')) !== fleet.id) throw new Error('the package\'s fleet is not chosen');
      if ((await page.inputValue('#campaign-name')) !== 'thermo-ota 2.0 to ota') throw new Error(`suggested name: ${await page.inputValue('#campaign-name')}`);
      await page.fill('#campaign-name', 'thermo-ota rollout');
      await page.click('#add-wave-devices');
      await page.fill('#campaign-waves .wave-row:nth-child(1) .wave-size', '1');
      // Refusals land at the field the server names: a threshold out of range...
      await page.fill('#campaign-failure-pct', '0');
      await page.click('#campaign-preview');
      await page.waitForSelector('#campaign-failure-pct-error:has-text("failure_pct: must be 1 to 100")');
      if ((await page.getAttribute('#campaign-failure-pct', 'aria-invalid')) !== 'true') throw new Error('the refused field is not marked');
      if (!(await page.evaluate(() => document.activeElement?.id === 'campaign-failure-pct'))) throw new Error('the refused field does not get the focus');
      if (await page.isEnabled('#campaign-create')) throw new Error('Create is offered without a preview');
      // ...and a rollback with no former target to roll back to.
      await page.fill('#campaign-failure-pct', '60');
      await page.fill('#campaign-min-sample', '3');
      await page.check('#campaign-rollback');
      await page.click('#campaign-preview');
      await page.waitForSelector('#campaign-rollback-error:has-text("the fleet has no other target package to roll back to")');
      if (await page.isVisible('#campaign-failure-pct-error')) throw new Error('the previous refusal is still shown');
      await page.uncheck('#campaign-rollback');
      // Short deadlines and no retries (advanced), and another admin's approval.
      await page.click('#campaign-advanced summary');
      for (const f of ['start', 'download', 'install', 'confirm']) await page.fill(`#campaign-${f}-timeout`, '60');
      await page.fill('#campaign-retries-failed', '0');
      await page.check('#campaign-approval');
      // The preview: 3 targets in a wave of 1 and one of the 2 left over.
      await page.click('#campaign-preview');
      await page.waitForSelector('#campaign-preview-result .preview[data-targets="3"][data-waves="1,2"]');
      await page.waitForSelector('#preview-targets:text-is("3 devices")');
      await page.waitForSelector('#preview-already:has-text("0 devices")');
      const waves = await page.$$eval('#preview-waves li', (els) => els.map((e) => e.textContent));
      if (waves.join('|') !== 'Wave 1: 1 device|Wave 2: 2 devices') throw new Error(`preview waves: ${waves.join('|')}`);
      if (!/\d/.test(await page.textContent('#preview-last-start'))) throw new Error('no estimated last start');
      await page.waitForSelector('#preview-notes:text-is("None.")');
      const order = await page.$$eval('#preview-devices li', (els) => els.map((e) => e.textContent));
      if (order.slice().sort().join() !== 'ota-a,ota-b,ota-c') throw new Error(`preview devices: ${order}`);
      await page.locator('#campaign-form').screenshot({ path: join(artifacts, '25-campaign-preview.png') });
      // A change makes the preview stale until it is run again.
      await page.fill('#campaign-soak', '1');
      await page.waitForSelector('#campaign-preview-result[data-stale="yes"] .preview-stale');
      if (await page.isEnabled('#campaign-create')) throw new Error('Create is offered on a stale preview');
      await page.fill('#campaign-soak', '0');
      await page.click('#campaign-preview');
      await page.waitForSelector('#campaign-preview-result[data-stale="no"] .preview[data-targets="3"]');
      await page.click('#campaign-create');
      await page.waitForSelector('main h1:has-text("thermo-ota rollout")');
      await page.waitForSelector('#campaign-state-text[data-state="draft"]');
      campaign = (await rest('GET', `/campaigns?fleet_id=${fleet.id}`))[0];
      if (!page.url().endsWith(`#/campaigns/${campaign.id}`)) throw new Error(`not on the campaign's page: ${page.url()}`);
      const p = campaign.policy;
      if (p.failure_pct !== 60 || p.min_sample !== 3 || p.retries_failed !== 0 || p.confirm_timeout_secs !== 60 || JSON.stringify(p.waves) !== '[{"devices":1}]' || !campaign.approval_required) throw new Error(`stored: ${JSON.stringify(campaign)}`);

      // Waiting for approval: no Start; the creator's own approval is refused by the server.
      await page.waitForSelector('#campaign-approval[data-approved="no"]');
      if (await page.locator('#campaign-start').count()) throw new Error('Start is offered before the approval');
      await page.click('#campaign-approve');
      await page.waitForSelector('#campaign-action-result .notice.error:has-text("other than the one who created it (forbidden)")');
      // Another admin (the bootstrap key) approves it; Start is offered then.
      await rest('POST', `/campaigns/${campaign.id}/approve`);
      await page.reload();
      await page.waitForSelector('#campaign-approval[data-approved="yes"]:has-text("approved by api-key:")');
      await shot(page, '26-campaign-approved');

      // The simulated devices: the last one to start (in wave 2) comes back on its old version.
      const faulty = order[2];
      const tokFile = join(dir, 'tokens');
      writeFileSync(tokFile, [faulty, order[0], order[1]].map((n) => tokens.get(n)).join('\n') + '\n');
      const caFile = join(dir, 'ca.pem');
      writeFileSync(caFile, ca);
      simulator = spawn(binary, ['simulate', '--ota', '--host', mqttHost, '--port', String(mqttPort), '--ca', caFile, '--tokens', tokFile,
        '--connections', '3', '--duration', '60', '--ota-title', 'thermo-ota', '--ota-version', '1.0', '--fault-rollback', '1', '--reboot-ms', '300'],
      { stdio: ['ignore', 'pipe', 'pipe'] });
      for (const out of [simulator.stdout, simulator.stderr]) createInterface({ input: out }).on('line', (l) => simLog.push(l));
      const ranAt = Date.now();
      page.once('dialog', (d) => d.accept());
      await page.click('#campaign-start');
      await page.waitForSelector('#campaign-state-text[data-state="running"]');
      await page.waitForSelector('#campaign-targets:text-is("3 devices")');
      // Followed live until it completes: 2 updated, 1 failed.
      await page.waitForSelector('#campaign-state-text[data-state="completed"]', { timeout: 45_000 });
      console.log(`# campaign completed ${Date.now() - ranAt} ms after its start`);
      await page.waitForSelector('#campaign-note:has-text("2 updated, 1 failed, 0 timed out")');
      await page.waitForSelector('#campaign-progress-bar[data-updated="2"][data-failed="1"][data-open="0"][data-targets="3"]');
      await page.waitForSelector('#campaign-progress-bar:has-text("2 updated · 1 failed · 0 open of 3")');
      await page.waitForSelector('#campaign-counts tr[data-state="updated"] td.count:text-is("2")');
      await page.waitForSelector('#campaign-counts tr[data-state="failed"] td.count:text-is("1")');
      for (const [w, devices, updated, failed] of [[0, 1, 1, 0], [1, 2, 1, 1]]) {
        const row = page.locator(`#campaign-waves tr[data-wave="${w}"][data-started="yes"]`);
        for (const [cls, n] of [['wave-devices', devices], ['wave-updated', updated], ['wave-failed', failed], ['wave-open', 0]]) {
          const got = (await row.locator(`td.${cls}`).textContent()).trim();
          if (got !== String(n)) throw new Error(`wave ${w + 1} ${cls}: ${got}, not ${n}`);
        }
      }
      const failing = page.locator('#campaign-failing tbody tr[data-device-id]');
      if ((await failing.count()) !== 1) throw new Error(`${await failing.count()} failing devices shown`);
      await failing.locator(`a:text-is("${faulty}")`).waitFor();
      await failing.locator('td.reason:has-text("reports UPDATED but runs thermo-ota 1.0")').waitFor();
      await page.waitForSelector('#campaign-actions:has-text("Finished")');
      if (await page.locator('#campaign-actions button').count()) throw new Error('a completed campaign offers actions');
      // The device list, filtered by state.
      await page.selectOption('#campaign-devices-state', 'failed');
      await page.waitForSelector('#campaign-devices-count:text-is("1 device failed")');
      await page.waitForSelector(`#campaign-devices-list tr[data-state="failed"] a:text-is("${faulty}")`);
      await page.selectOption('#campaign-devices-state', 'updated');
      await page.waitForSelector('#campaign-devices-count:text-is("2 devices updated")');
      await shot(page, '27-campaign-completed');

      // The failing device's page: the update failed, with the reason.
      await failing.locator(`a:text-is("${faulty}")`).click();
      await page.waitForSelector(`main h1:has-text("${faulty}")`);
      const failedUpdate = page.locator(`#device-ota article.ota-update[data-campaign-id="${campaign.id}"][data-state="failed"]`);
      await failedUpdate.locator('.ota-error:has-text("reports UPDATED but runs thermo-ota 1.0")').waitFor();
      // An updated device's page: its timeline, from pending to updated after the reboot.
      const good = order[0];
      await page.goto(`${base}/#/devices?fleet_id=${fleet.id}`);
      await page.click(`a:text-is("${good}")`);
      const updated = page.locator(`#device-ota article.ota-update[data-campaign-id="${campaign.id}"][data-state="updated"]`);
      await updated.locator('.ota-package:text-is("firmware thermo-ota 2.0")').waitFor();
      await updated.locator('.timeline li[data-state="updated"]:has-text("runs thermo-ota 2.0 after reconnecting")').waitFor();
      const steps = await updated.locator('.timeline li').evaluateAll((els) => els.map((e) => e.dataset.state));
      for (const st of ['pending', 'queued', 'initiated', 'downloading', 'updated']) {
        if (!steps.includes(st)) throw new Error(`the timeline lacks ${st}: ${steps.join(' → ')}`);
      }
      await page.locator('#updates').screenshot({ path: join(artifacts, '28-device-updates.png') });

      // The list: filtered by state; the emergency stop finds nothing running.
      await page.click('#nav a[href="#/campaigns"]');
      const listed = page.locator(`#campaigns-list tr[data-campaign-id="${campaign.id}"][data-state="completed"]`);
      await listed.locator('.campaign-progress[data-updated="2"][data-failed="1"][data-open="0"]').waitFor();
      await listed.locator('td:has-text("thermo-ota 2.0")').waitFor();
      await page.selectOption('#campaigns-state', 'draft');
      await page.waitForSelector('#campaigns-list td:text-is("No campaign matches.")');
      await page.selectOption('#campaigns-state', 'completed');
      await listed.waitFor();
      if (!page.url().includes('state=completed')) throw new Error(`the filter is not in the address: ${page.url()}`);
      page.once('dialog', (d) => d.accept());
      await page.click('#stop-all');
      await page.waitForSelector('#stop-all-result p:text-is("Emergency stop: no campaign was running.")');
      await shot(page, '29-campaigns');
    } finally {
      try { simulator?.kill('SIGTERM'); } catch { /* gone */ }
      writeFileSync(join(artifacts, 'simulator.log'), simLog.join('\n'));
      rmSync(dir, { recursive: true, force: true });
    }
  });

  await step('a viewer reads fleets and devices without the controls they may not use; the server still decides', async () => {
    const fleet = (await rest('GET', '/fleets?name=sensors')).items[0];
    const vera = (await rest('GET', '/users')).find((u) => u.username === 'vera');
    const { secret } = await rest('POST', `/users/${vera.id}/api-keys`, { name: 'vera-ui' });
    const c = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    try {
      const p = await c.newPage();
      p.setDefaultTimeout(STEP_MS);
      guard(p, problems);
      await signInWithKey(p, base, secret);
      await p.waitForSelector('#nav a[href="#/users"]', { state: 'hidden' });
      // Workspaces and fleets: listed, with notes instead of the forms and delete buttons.
      await p.goto(`${base}/#/fleets`);
      await p.waitForSelector('a:text-is("sensors")');
      await p.waitForSelector('#main [data-needs="server-admin"]');
      await p.waitForSelector('#main [data-needs="admin"]:has-text("Creating and deleting fleets")');
      for (const sel of ['#workspace-form', '#fleet-form', 'main button:text-is("Delete")']) {
        if (await p.locator(sel).count()) throw new Error(`a viewer is offered ${sel}`);
      }
      // The fleet page: reading works, every change is replaced by a note.
      await p.click('a[data-fleet-settings="sensors"]');
      await p.waitForSelector('#fleet-role:text-is("viewer")');
      await p.waitForSelector('#fleet-defaults tr[data-key="report_interval"]');
      await p.waitForSelector('#manufacturer-cas td:text-is("No manufacturer CAs.")');
      await p.waitForSelector('#provisioning [data-needs="admin"]');
      await p.waitForSelector('#manufacturer-cas [data-needs="admin"]');
      await p.waitForSelector('#fleet-defaults [data-needs="operator"]');
      for (const sel of ['#fleet-edit-form', '#provisioning-form', '#provisioning-state', '#ca-form', '#defaults-form', '#fleet-defaults button']) {
        if (await p.locator(sel).count()) throw new Error(`a viewer is offered ${sel}`);
      }
      await p.waitForSelector('#fleet-target-firmware[data-assigned="no"]');
      await p.waitForSelector('#fleet-packages [data-needs="operator"]');
      if (await p.locator('#fleet-packages form, #fleet-packages button').count()) throw new Error('a viewer is offered to assign packages');
      await shot(p, '20-viewer-fleet');
      // Packages: listed and downloadable; no upload, no delete.
      await p.click('#nav a[href="#/packages"]');
      await p.waitForSelector('#packages-list tr[data-title="thermo-app"] a:text-is("Download")');
      await p.waitForSelector('#package-upload [data-needs="admin"]');
      if (await p.locator('#package-upload-form, #packages-list button:text-is("Delete")').count()) throw new Error('a viewer is offered to upload or delete packages');
      // Signed in with an API key, the download is fetched with it and saved.
      const [dl] = await Promise.all([p.waitForEvent('download'), p.click('#packages-list tr[data-title="thermo-app"] a:text-is("Download")')]);
      const got = readFileSync(await dl.path());
      if (dl.suggestedFilename() !== 'thermo-app.tar' || got.length !== 4096) throw new Error(`a viewer's download: ${dl.suggestedFilename()}, ${got.length} bytes`);
      if (await p.locator('#packages-list a:text-is("Roll out")').count()) throw new Error('a viewer is offered to roll out a package');
      // Campaigns: the list and a campaign's progress, failures and devices; no action, no new
      // campaign, no emergency stop, on a draft as on a finished one.
      const draft = await rest('POST', '/campaigns', { name: 'viewer-draft', package_id: campaign.package_id, fleet_id: campaign.fleet_id });
      await p.click('#nav a[href="#/campaigns"]');
      await p.waitForSelector(`#campaigns-list tr[data-campaign-id="${campaign.id}"] .campaign-progress[data-updated="2"]`);
      await p.waitForSelector(`#campaigns-list tr[data-campaign-id="${draft.id}"][data-state="draft"]`);
      await p.waitForSelector('main [data-needs="operator"]:has-text("Creating campaigns")');
      await p.waitForSelector('#emergency-stop [data-needs="server-admin"]');
      if (await p.locator('#new-campaign, #stop-all').count()) throw new Error('a viewer is offered a new campaign or the emergency stop');
      await p.click(`#campaigns-list a:text-is("viewer-draft")`);
      await p.waitForSelector('#campaign-state-text[data-state="draft"]');
      await p.waitForSelector('#campaign-actions [data-needs="operator"]:has-text("Starting or deleting the campaign")');
      if (await p.locator('main button:not(.link)').count()) throw new Error(`a viewer is offered ${await p.locator('main button').allTextContents()}`);
      await p.goto(`${base}/#/campaigns/${campaign.id}`);
      await p.waitForSelector('#campaign-failing td.reason:has-text("reports UPDATED but runs thermo-ota 1.0")');
      await p.waitForSelector('#campaign-devices-count:text-is("3 devices")');
      if (await p.locator('main button').count()) throw new Error(`a viewer is offered ${await p.locator('main button').allTextContents()}`);
      // The server refuses her anyway.
      const refusedStart = await p.evaluate(async ([id, key]) => {
        const r = await fetch(`/api/v1/campaigns/${id}/start`, { method: 'POST', headers: { Authorization: `Bearer ${key}` } });
        return `${r.status} ${(await r.json()).error?.code}`;
      }, [draft.id, secret]);
      if (refusedStart !== '403 forbidden') throw new Error(`a viewer's start: ${refusedStart}`);
      await shot(p, '30-viewer-campaign');
      await rest('DELETE', `/campaigns/${draft.id}`);
      await p.goto(`${base}/#/fleets/${fleet.id}`);
      // The devices page and a device page: data, no changes.
      await p.click('#fleet-devices-link');
      await p.waitForSelector('a:text-is("thermo-1")');
      await p.waitForSelector('#main [data-needs="operator"]:has-text("Adding devices")');
      if (await p.locator('#device-form').count()) throw new Error('a viewer is offered the new device form');
      await p.click('a:text-is("thermo-1")');
      await p.waitForSelector('#device-role:text-is("viewer")');
      await p.waitForFunction(() => Number(document.querySelector('#chart')?.dataset.points) >= 13);
      await p.waitForSelector('#attributes th:text-is("target_temp")');
      await p.waitForSelector('#jobs-table tr[data-job-id]');
      await p.waitForSelector('#credentials tr:has-text("certificate")');
      for (const [section, needs] of [['identity', 'operator'], ['credentials', 'operator'], ['attributes', 'operator'], ['jobs', 'operator']]) {
        await p.waitForSelector(`#${section} [data-needs="${needs}"]`);
      }
      for (const sel of ['#command-form', '#shared-form', '#toggle-enabled', '#toggle-gateway', '#delete-device', '#credentials form', '#credentials button:text-is("Revoke")', '#attributes button', '#jobs-table button']) {
        if (await p.locator(sel).count()) throw new Error(`a viewer is offered ${sel}`);
      }
      await shot(p, '21-viewer-device');
      // The jobs page: rollouts and schedules listed, none to send, cancel or change.
      await p.click('#nav a[href="#/jobs"]');
      await p.waitForSelector('#fleet-jobs td:text-is("blink")');
      await p.waitForSelector('#schedules td:text-is("nightly")');
      await p.waitForSelector('#fleet-job-form-box [data-needs="operator"]');
      await p.waitForSelector('#schedules [data-needs="operator"]');
      for (const sel of ['#fleet-job-form', '#schedule-form', '#schedules button', '#fleet-jobs button']) {
        if (await p.locator(sel).count()) throw new Error(`a viewer is offered ${sel}`);
      }

      // Made an operator, she gets the command form; demoted while the page is open, her
      // command is refused by the server, and the page says why.
      const grant = (role) => rest('PATCH', `/users/${vera.id}`, { grants: [{ workspace_id: fleet.workspace_id, role }] });
      await grant('operator');
      await p.goto(`${base}/#/devices`);
      await p.click('a:text-is("thermo-1")');
      await p.waitForSelector('#device-role:text-is("operator")');
      await p.waitForSelector('#command-form');
      await p.waitForSelector('#identity [data-needs="admin"]:has-text("Deleting the device")');
      if (await p.locator('#delete-device').count()) throw new Error('an operator is offered Delete device');
      await grant('viewer');
      await p.fill('#command-method', 'reboot');
      await p.click('#command-form button[type=submit]');
      await p.waitForSelector('#toast.error:has-text("needs the operator role")');
      await p.click('#nav a[href="#/devices"]');
      await p.click('a:text-is("thermo-1")');
      await p.waitForSelector('#device-role:text-is("viewer")');
      if (await p.locator('#command-form').count()) throw new Error('the command form stays after the demotion');
    } finally {
      await c.close();
    }
  });

  await step('phone-sized screen', async () => {
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    const p = await phone.newPage();
    p.setDefaultTimeout(STEP_MS);
    guard(p, problems);
    await signIn(p, base);
    if (await p.isVisible('#nav a[href="#/devices"]')) throw new Error('the menu should fold on a phone');
    await p.click('#menu-toggle');
    await p.click('#nav a[href="#/devices"]');
    await p.waitForSelector('tr[data-status="online"] a:text-is("thermo-1")');
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) throw new Error(`the page is ${overflow} px wider than the screen`);
    await shot(p, '10-phone-devices');
    await p.click('a:text-is("thermo-1")');
    await p.waitForFunction(() => Number(document.querySelector('#chart')?.dataset.points) >= 13);
    const overflow2 = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow2 > 1) throw new Error(`the device page is ${overflow2} px wider than the screen`);
    await shot(p, '11-phone-device');
    // The campaign pages fit too.
    for (const [hash, sel, name] of [[`#/campaigns/${campaign.id}`, '#campaign-waves tr[data-wave="1"]', 'campaign'], ['#/campaigns/new', '#campaign-preview', 'new-campaign'], ['#/campaigns', '#campaigns-list tr[data-campaign-id]', 'campaigns'], [dashboardHash, '#widget-5 svg.map circle.marker', 'dashboard']]) {
      await p.goto(`${base}/${hash}`);
      await p.waitForSelector(sel);
      const over = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      if (over > 1) throw new Error(`${hash} is ${over} px wider than the screen`);
      await shot(p, `11b-phone-${name}`);
    }
    await phone.close();
  });

  await step('keyboard only: sign in, find the device, send a command', async () => {
    const kb = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const p = await kb.newPage();
    p.setDefaultTimeout(STEP_MS);
    guard(p, problems);
    await p.goto(`${base}/`);
    await p.waitForSelector('#login-form');
    // Tab to the username, type it, Tab to the password, type it; Enter submits the form.
    await tabTo(p, '#login-username');
    await p.keyboard.type(ADMIN.username);
    await p.keyboard.press('Tab');
    await p.keyboard.type(ADMIN.password);
    await p.keyboard.press('Enter');
    await p.waitForSelector('main h1:text("Overview")');
    await tabTo(p, '#nav a[href="#/devices"]');
    await p.keyboard.press('Enter');
    await p.waitForSelector('main h1:has-text("Devices")');
    await p.waitForFunction(() => document.activeElement?.tagName === 'H1', null, { timeout: 5000 })
      .catch(() => { throw new Error('focus did not move to the page heading'); });
    await tabTo(p, 'tr a:text-is("thermo-1")');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#command-form');
    await tabTo(p, '#command-method', 80);
    await p.keyboard.type('reboot');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#job-result [data-state="succeeded"]', { timeout: 20_000 });
    await shot(p, '12-keyboard-command');
    await kb.close();
  });

  await step('users and API keys; the fallback sign-in with an API key', async () => {
    await page.goto(`${base}/#/users`);
    await page.waitForSelector(`#users-body th:text-is("${ADMIN.username}")`);
    await page.fill('#user-form [name=username]', 'bob');
    await page.fill('#user-form [name=display_name]', 'Bob Operator');
    await page.fill('#user-form [name=password]', 'another long password');
    await page.selectOption('#user-form [name=workspace_id]', { label: 'Plant' });
    await page.selectOption('#user-form [name=role]', 'operator');
    await page.click('#user-form button[type=submit]');
    await page.waitForSelector('#users-body th:text-is("bob")');
    await page.waitForSelector('#users-body td:text("operator in Plant")');
    await page.click(`#users-body tr:has-text("${ADMIN.username}") button:text-is("API keys")`);
    await page.fill('#api-key-name', 'ui-test');
    await page.click('#user-keys button:text-is("Create API key")');
    await page.waitForSelector('#user-keys input.secret');
    const secret = await page.inputValue('#user-keys input.secret');
    await page.waitForSelector('#user-keys td:text-is("ui-test")');
    await shot(page, '13-users');
    // The backup button streams an online backup: a tar whose manifest comes last.
    const [backup] = await Promise.all([page.waitForEvent('download'), page.click('#backup-download')]);
    const tarPath = await backup.path();
    const tar = readFileSync(tarPath);
    if (!/^corral-.*\.backup\.tar$/.test(backup.suggestedFilename())) throw new Error(`backup named ${backup.suggestedFilename()}`);
    if (tar.length < 10240 || !tar.includes('corral-backup/manifest.json') || !tar.includes('pki/ca.pem')) throw new Error(`the backup download is not a backup (${tar.length} bytes)`);
    // The new key signs in through the fallback form, in a tab of its own.
    const c = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const p = await c.newPage();
    p.setDefaultTimeout(STEP_MS);
    guard(p, problems);
    await signInWithKey(p, base, secret);
    await p.waitForSelector('#who:text("API key")');
    await p.goto(`${base}/#/devices`);
    await p.waitForSelector('a:text-is("thermo-1")');
    await c.close();
    // Bob, an operator of one workspace, signs in: the server-wide pages are not in his menu,
    // and the server refuses him the user list anyway.
    const cb = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const pb = await cb.newPage();
    pb.setDefaultTimeout(STEP_MS);
    guard(pb, problems);
    await pb.goto(`${base}/`);
    await pb.waitForSelector('#login-form');
    await pb.fill('#login-username', 'bob');
    await pb.fill('#login-password', 'another long password');
    await pb.click('#login-form button[type=submit]');
    await pb.waitForSelector('main h1:text("Overview")');
    await pb.waitForSelector('#nav a[href="#/devices"]', { state: 'visible' });
    await pb.waitForSelector('#nav a[href="#/users"]', { state: 'hidden' });
    await pb.waitForSelector('#nav a[href="#/integrations"]', { state: 'hidden' });
    const refused = await pb.evaluate(async () => (await fetch('/api/v1/users')).status);
    if (refused !== 403) throw new Error(`an operator listed users: HTTP ${refused}`);
    await cb.close();
    // The bootstrap key too.
    const c2 = await browser.newContext();
    const p2 = await c2.newPage();
    guard(p2, problems);
    await signInWithKey(p2, base, adminKey);
    await c2.close();
  });

  await step('integration health, dead letters and replay against a real receiver', async () => {
    // A receiver on loopback that refuses with 400 until told otherwise: the test event goes to
    // the dead letters; once it accepts, a replay from the UI delivers it.
    const { createServer } = await import('node:http');
    let accept = false;
    const received = [];
    const sink = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        if (accept) received.push(body);
        res.writeHead(accept ? 200 : 400, { 'Content-Type': 'text/plain' });
        res.end(accept ? 'ok' : 'bad request');
      });
    });
    await new Promise((r) => sink.listen(0, '127.0.0.1', r));
    const port = sink.address().port;
    try {
      const created = await rest('POST', '/integrations', { name: 'erp-webhook', url: `http://127.0.0.1:${port}/hook` });
      const id = created.integration.id;
      await rest('POST', `/integrations/${id}/test`, {});
      const until = Date.now() + 15000;
      while ((await rest('GET', `/integrations/${id}/status`)).dead_letters < 1) {
        if (Date.now() > until) throw new Error('the refused test event did not become a dead letter');
        await new Promise((r) => setTimeout(r, 100));
      }
      const c = await browser.newContext({ viewport: { width: 1280, height: 860 } });
      const p = await c.newPage();
      p.setDefaultTimeout(STEP_MS);
      guard(p, problems);
      await signIn(p, base);
      // The overview shows its health: the refusal as the last error.
      await p.waitForSelector('a:text-is("erp-webhook")');
      await p.waitForSelector('td:text-is("HTTP 400 Bad Request")');
      await shot(p, '14-overview-full');
      await p.goto(`${base}/#/integrations`);
      await p.waitForSelector('#integrations-body td:text-is("erp-webhook")');
      await p.click('button:text-is("Dead letters")');
      await p.waitForSelector('#integration-detail td:has-text("400")');
      accept = true;
      await p.click('#integration-detail button:text-is("Replay all dead letters")');
      await p.waitForSelector('#integration-detail td:text-is("No dead letters.")');
      const deadline = Date.now() + 15000;
      while (received.length < 1) {
        if (Date.now() > deadline) throw new Error('the replayed event did not reach the receiver');
        await new Promise((r) => setTimeout(r, 100));
      }
      await shot(p, '15-integrations');
      await c.close();
    } finally {
      sink.close();
    }
  });

  await step('integrations from the UI: create with a refusal at the form, edit, pause, resume, test, delete', async () => {
    const { createServer } = await import('node:http');
    const got = [];
    const sink = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => { got.push({ token: req.headers['x-token'], body }); res.writeHead(200); res.end('ok'); });
    });
    await new Promise((r) => sink.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${sink.address().port}/in`;
    try {
      await page.goto(`${base}/#/integrations`);
      await page.click('#integration-new');
      await page.fill('#integration-name', 'ui-hook');
      await page.fill('#integration-url', 'ftp://nowhere.example/in');
      await page.check('#integration-kinds input[value="conditions"]');
      await page.fill('#integration-auth-name', 'X-Token');
      await page.fill('#integration-auth-value', 's3cret');
      await page.click('#integration-form button[type=submit]');
      await page.waitForSelector('#integration-error:has-text("invalid_field")');
      await page.fill('#integration-url', url);
      await page.click('#integration-form button[type=submit]');
      await page.waitForSelector('#integration-editor .secret-box');
      await page.click('#integration-done');
      await page.waitForSelector('tr[data-integration="ui-hook"]');
      const stored = (await rest('GET', '/integrations')).items.find((i) => i.name === 'ui-hook');
      if (!stored || stored.kinds.join() !== 'conditions' || stored.auth_header_name !== 'X-Token' || stored.url !== url) throw new Error(`stored as ${JSON.stringify(stored)}`);
      await page.click('button[aria-label="Edit ui-hook"]');
      await page.fill('#integration-name', 'ui-hook-2');
      await page.check('#integration-kinds input[value="data"]');
      await page.click('#integration-form button[type=submit]');
      await page.waitForSelector('tr[data-integration="ui-hook-2"]');
      const edited = await rest('GET', `/integrations/${stored.id}`);
      if (edited.kinds.slice().sort().join() !== 'conditions,data' || edited.auth_header_name !== 'X-Token') throw new Error(`edited to ${JSON.stringify(edited)}`);
      await page.click('button[aria-label="Pause ui-hook-2"]');
      await page.waitForSelector('button[aria-label="Resume ui-hook-2"]');
      if (!(await rest('GET', `/integrations/${stored.id}`)).paused) throw new Error('not paused on the server');
      await page.click('button[aria-label="Resume ui-hook-2"]');
      await page.waitForSelector('button[aria-label="Pause ui-hook-2"]');
      await page.click('button[aria-label="Send a test event to ui-hook-2"]');
      const until = Date.now() + 15000;
      while (!got.some((g) => g.token === 's3cret' && g.body.includes('"test"'))) {
        if (Date.now() > until) throw new Error(`the test event did not arrive with its auth header: ${JSON.stringify(got)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      await shot(page, '15b-integrations-edit');
      await page.click('button[aria-label="Delete ui-hook-2"]');
      await page.waitForSelector('button[aria-label="Delete ui-hook-2"]:text-is("Really delete?")');
      await page.click('button[aria-label="Delete ui-hook-2"]');
      await page.waitForSelector('tr[data-integration="ui-hook-2"]', { state: 'detached' });
      if ((await rest('GET', '/integrations')).items.some((i) => i.id === stored.id)) throw new Error('still on the server');
    } finally {
      sink.close();
    }
  });

  await step('data export from the UI (a device as JSON, the fleet as CSV); the audit log by kind with names; the last hour\'s message rates', async () => {
    await page.goto(`${base}/#/export`);
    await page.waitForSelector('#export-devices option:text-is("thermo-1")', { state: 'attached' });
    await page.selectOption('#export-devices', { label: 'thermo-1' });
    await page.fill('#export-keys', 'temperature');
    await page.check('#export-format input[value="json"]');
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#export-form button[type=submit]')]);
    const rows = JSON.parse(await readDownload(dl));
    if (!rows.length || rows.some((r) => r.key !== 'temperature')) throw new Error(`the JSON export holds ${JSON.stringify(rows).slice(0, 300)}`);
    if (!rows.some((r) => Number(r.value) === 25.5)) throw new Error('the JSON export lacks the value 25.5');
    await page.selectOption('#export-devices', []);
    await page.fill('#export-keys', '');
    await page.check('#export-format input[value="csv"]');
    const [dl2] = await Promise.all([page.waitForEvent('download'), page.click('#export-form button[type=submit]')]);
    const csv = (await readDownload(dl2)).trim().split(/\r?\n/);
    if (csv[0] !== 'device_id,device,tag,key,ts,time,value' || !csv.some((l) => l.includes(',humidity,'))) throw new Error(`the CSV export starts ${csv.slice(0, 3).join(' | ')}`);
    if (!page.url().includes('format=csv')) throw new Error(`the choices are not in the address: ${page.url()}`);
    await page.goto(`${base}/#/audit`);
    await page.selectOption('#audit-kind', 'credential_issued');
    await page.fill('#audit-actor', ADMIN.username);
    await page.click('form[role=search] button[type=submit]');
    await page.waitForSelector('#audit-table tr[data-kind="credential_issued"] a:text-is("thermo-1")');
    await page.waitForSelector('#audit-table tr[data-kind="credential_issued"] a:text-is("sensors")');
    if (await page.locator('#audit-table tr[data-kind]:not([data-kind="credential_issued"])').count()) throw new Error('the kind filter let other kinds through');
    // The overview's last hour: messages per minute overall, per workspace and per fleet.
    await page.goto(`${base}/#/`);
    await page.waitForSelector('#stat-hour svg.sparkline path.spark-line');
    const total = Number(await page.getAttribute('#stat-hour svg.sparkline', 'data-total'));
    if (!(total >= 5)) throw new Error(`the last hour counts ${total} messages`);
    const sensors = await rest('GET', '/fleets');
    const fid = sensors.items.find((x) => x.name === 'sensors').id;
    const fleetTotal = Number(await page.getAttribute(`tr[data-fleet-id="${fid}"] td[data-col="messages"] svg.sparkline`, 'data-total'));
    if (!(fleetTotal >= 5)) throw new Error(`the sensors fleet's last hour counts ${fleetTotal}`);
    await page.waitForSelector('table.workspace-rates th:text-is("Plant")');
  });

  await step('dashboards over more than 1,000 devices: names read by id, devices found by a search, live over the workspace at a steady rate, a map paged through them all', async () => {
    // A workspace of its own (the steps before count the other devices): 1,100 devices in one
    // import, and one more that the chart names and that is deleted later.
    const ws = await rest('POST', '/workspaces', { name: 'Depot' });
    const yard = await rest('POST', '/fleets', { workspace_id: ws.id, name: 'yard' });
    const N = 1100;
    const yardName = (i) => `yard-${String(i).padStart(4, '0')}`;
    const imported = await rest('POST', '/devices/import', { fleet_id: yard.id, csv: `name\n${Array.from({ length: N }, (_, i) => yardName(i)).join('\n')}\n` });
    if (imported.created.length !== N) throw new Error(`imported ${imported.created.length} devices`);
    const tokens = Object.fromEntries(imported.created.map((c) => [c.name, c.token]));
    const doomed = (await rest('POST', '/devices', { fleet_id: yard.id, name: 'doomed' })).device;
    const send = async (name, values) => {
      const r = await fetch(`${base}/api/v1/${tokens[name]}/telemetry`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(values) });
      if (!r.ok) throw new Error(`telemetry of ${name}: ${r.status} ${await r.text()}`);
    };
    // Positions of ten devices created after the first 1,000 (the map's second page).
    const late = Array.from({ length: 10 }, (_, i) => yardName(1050 + i));
    await Promise.all(late.map((n, i) => send(n, { latitude: 40 + i, longitude: -3 - i, temperature: 10 + i })));
    await send('yard-1099', { temperature: 7.5 });
    const requests = [];
    const onRequest = (r) => { if (r.url().includes('/api/v1/')) requests.push(r.url()); };
    page.on('request', onRequest);
    await page.goto(`${base}/#/dashboards`);
    await page.waitForSelector('#dashboard-scope option:text-is("Depot (whole workspace)")', { state: 'attached' });
    await page.fill('#dashboard-name', 'Depot yard');
    await page.selectOption('#dashboard-scope', { label: 'Depot (whole workspace)' });
    await page.click('#dashboard-form button[type=submit]');
    await page.waitForSelector('#widget-form');
    // The picker asks the server for 50 at a time, in the dashboard's workspace, and says so.
    await page.waitForSelector(`#widget-devices-status:text("The first 50 of ${N + 1} devices: type more of the name.")`);
    await page.fill('#widget-devices-search', 'yard-10');
    await page.waitForSelector('#widget-devices-status:text("The first 50 of 100 matches: type more of the name.")');
    await page.fill('#widget-devices-search', 'yard-105');
    await page.waitForSelector('#widget-devices-status:text("10 matches.")');
    if (await page.locator('#widget-devices-results button').count() !== 10) throw new Error('not 10 matches listed');
    await page.click('#widget-devices-results button[aria-label="Add yard-1050"]');
    await page.waitForSelector('#widget-devices-chosen li:has-text("yard-1050")');
    if (await page.locator('#widget-devices-results button[aria-label="Add yard-1050"]').count()) throw new Error('a chosen device is still offered');
    await pickDevice(page, 'widget-devices', 'doomed');
    await page.fill('#widget-title', 'Late ones');
    await page.fill('#widget-keys', 'temperature');
    await page.click('#widget-form button[type=submit]');
    await page.waitForSelector('#widget-list li:has-text("Late ones")');
    await page.selectOption('#widget-kind', 'value');
    await page.fill('#widget-title', 'Last one');
    await pickDevice(page, 'widget-device', 'yard-1099');
    await page.fill('#widget-key', 'temperature');
    await page.click('#widget-form button[type=submit]');
    await page.waitForSelector('#widget-list li:has-text("Last one")');
    await page.selectOption('#widget-kind', 'map');
    await page.fill('#widget-title', 'Yard map');
    await page.selectOption('#widget-width', '4');
    await page.click('#widget-form button[type=submit]');
    await page.waitForSelector('#widget-list li:has-text("Yard map")');
    await page.click('#dashboard-save');
    await page.waitForSelector('#dashboard-editor', { state: 'hidden' });
    const hash = new URL(page.url()).hash.split('?')[0];
    // Names of the devices the widgets name, each read by id; the map pages through all of them.
    await page.waitForSelector('#widget-0 .legend li:text-is("yard-1050 · temperature")');
    await page.waitForSelector('#widget-0 .legend li:text-is("doomed · temperature")');
    await page.waitForSelector('#widget-1 .stat-value:text-is("7.5")');
    await page.waitForSelector('#widget-1 p.muted:has-text("temperature of yard-1099")');
    await page.waitForSelector(`#widget-2 details.map-list summary:text("10 of ${(N + 1).toLocaleString('en-US')} devices report a position")`);
    for (const n of late) await page.waitForSelector(`#widget-2 svg.map a[aria-label^="${n}, "] circle.marker`, { state: 'attached' });
    const pages = requests.filter((u) => /\/devices\?/.test(u) && u.includes('keys=latitude'));
    if (pages.length < 2 || !pages.some((u) => u.includes('cursor='))) throw new Error(`the map did not page: ${pages.join(' ')}`);
    if (requests.some((u) => /\/devices\?/.test(u) && !u.includes('keys=') && !u.includes('limit=50'))) throw new Error(`a device list was read whole: ${requests.filter((u) => /\/devices\?/.test(u)).join(' ')}`);
    if (!requests.some((u) => u.includes(`/events?`) && u.includes(`workspace_id=${ws.id}`))) throw new Error('the live stream is not the workspace\'s');
    await shot(page, '06d-dashboard-1100-devices');
    // Live over the whole workspace: a device sending every 300 ms redraws the widgets while
    // it goes on sending (a debounce never would), at most every 2 s.
    await page.evaluate(() => {
      window.drawTimes = [];
      new MutationObserver(() => window.drawTimes.push(Date.now())).observe(document.getElementById('dashboard-grid'), { attributes: true, attributeFilter: ['data-drawn-at'] });
    });
    let sending = true;
    let v = 100;
    const sender = (async () => {
      while (sending) {
        await send('yard-1099', { temperature: v++ });
        await new Promise((r) => setTimeout(r, 300));
      }
    })();
    try {
      await page.waitForFunction(() => Number(document.querySelector('#widget-1 .stat-value')?.textContent) >= 100, null, { timeout: 8000 });
      const first = Number(await page.textContent('#widget-1 .stat-value'));
      await page.waitForFunction((f) => Number(document.querySelector('#widget-1 .stat-value')?.textContent) > f, first, { timeout: 8000 });
    } finally {
      sending = false;
      await sender;
    }
    const times = await page.evaluate(() => window.drawTimes);
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    if (times.length < 2 || gaps.some((g) => g < 1000)) throw new Error(`redraws ${times.length}, gaps ${gaps.join(', ')} ms`);
    // A deleted device: its short id, and the rest of the chart still drawn.
    await rest('DELETE', `/devices/${doomed.id}`);
    await page.reload();
    await page.waitForSelector(`#widget-0 .legend li:text-is("${doomed.id.slice(0, 8)} (not found) · temperature")`);
    await page.waitForSelector('#widget-0 .legend li:text-is("yard-1050 · temperature")');
    // The editor shows a widget's devices by name; a chart takes 10 at most.
    await page.click('#dashboard-edit');
    await page.click('button[aria-label="Edit Late ones"]');
    await page.waitForSelector('#widget-devices-chosen li:has-text("yard-1050")');
    await page.waitForSelector(`#widget-devices-chosen li:has-text("${doomed.id.slice(0, 8)} (not found)")`);
    await page.fill('#widget-devices-search', 'yard-105');
    await page.waitForSelector('#widget-devices-status:text("10 matches.")');
    for (let i = 1; i <= 8; i++) await page.click(`#widget-devices-results button[aria-label="Add yard-105${i}"]`);
    await page.waitForSelector('#widget-devices-status:has-text("10 devices chosen")');
    if (!(await page.isDisabled('#widget-devices-results button[aria-label="Add yard-1059"]'))) throw new Error('an eleventh device can be added');
    await page.locator('#widget-form').screenshot({ path: join(artifacts, '06f-device-picker.png') });
    await page.click('button[aria-label="Edit Last one"]');
    await page.waitForSelector('#widget-device-chosen li:has-text("yard-1099")');
    await page.click('#dashboard-cancel');
    await page.waitForSelector('#dashboard-editor', { state: 'hidden' });
    page.off('request', onRequest);
    if (!hash.startsWith('#/dashboards/')) throw new Error(`the dashboard is at ${hash}`);
  });

  await step('keyboard only: build a dashboard, reorder and remove widgets, save, use the toolbar and a map marker', async () => {
    const kb = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const p = await kb.newPage();
    p.setDefaultTimeout(STEP_MS);
    guard(p, problems);
    await signIn(p, base);
    await p.goto(`${base}/#/dashboards`);
    await p.waitForSelector('#dashboard-scope option:text-is("Plant / sensors")', { state: 'attached' });
    const focused = () => p.evaluate(() => {
      const a = document.activeElement;
      return { id: a?.id, tag: a?.tagName, label: a?.getAttribute('aria-label'), text: a?.textContent.trim(), index: a?.closest('li[data-index]')?.dataset.index };
    });
    const expectFocus = async (want, what) => {
      const f = await focused();
      for (const [k, v] of Object.entries(want)) if (f[k] !== v) throw new Error(`${what}: focus is on ${JSON.stringify(f)}`);
    };
    await tabTo(p, '#dashboard-name');
    await p.keyboard.type('Keyboard room');
    await p.keyboard.press('Tab');
    await p.keyboard.type('Plant / sensors'); // a closed select's type-ahead
    const sensors = (await rest('GET', '/fleets?name=sensors')).items[0];
    if (await p.inputValue('#dashboard-scope') !== `f:${sensors.id}`) throw new Error(`the scope is ${await p.inputValue('#dashboard-scope')}`);
    await tabTo(p, '#dashboard-form button[type=submit]');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#widget-form');
    await p.waitForFunction(() => document.activeElement?.id === 'editor-h');
    // A latest value: the device found by typing its name, Enter adds it.
    await tabTo(p, '#widget-kind');
    await p.keyboard.type('Latest');
    await p.waitForSelector('#widget-device-search');
    await p.keyboard.press('Tab');
    await p.keyboard.type('Now');
    await tabTo(p, '#widget-device-search');
    await p.keyboard.type('thermo-1');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#widget-device-chosen li:has-text("thermo-1")');
    await expectFocus({ id: 'widget-device-search' }, 'after choosing a device');
    await tabTo(p, '#widget-key');
    await p.keyboard.type('temperature');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#widget-list li:has-text("Now")');
    await expectFocus({ id: 'widget-title' }, 'after adding a widget');
    // A map and a table, each: back to the kind, type-ahead, title, Enter.
    for (const [kind, title, keys] of [['Map', 'Where'], ['Table', 'List', 'temperature']]) {
      await tabTo(p, '#widget-kind', 5, 'Shift+Tab');
      await p.keyboard.type(kind);
      await p.keyboard.press('Tab');
      await p.keyboard.type(title);
      if (keys) {
        await tabTo(p, '#widget-keys');
        await p.keyboard.type(keys);
      }
      await p.keyboard.press('Enter');
      await p.waitForSelector(`#widget-list li:has-text("${title}")`);
    }
    // Move "List" up twice: focus follows it (to Down once Up is disabled at the top).
    await tabTo(p, 'button[aria-label="Move List up"]', 40, 'Shift+Tab');
    await p.keyboard.press('Enter');
    await expectFocus({ label: 'Move List up', index: '1' }, 'after moving up');
    await p.keyboard.press('Enter');
    await expectFocus({ label: 'Move List down', index: '0' }, 'after moving to the top');
    const order = async () => p.$$eval('#widget-list li strong', (xs) => xs.map((x) => x.textContent).join(','));
    if (await order() !== 'List,Now,Where') throw new Error(`the order is ${await order()}`);
    // Remove "Now" with Space: focus moves to the next widget's Remove.
    await tabTo(p, 'button[aria-label="Remove Now"]');
    await p.keyboard.press('Space');
    await expectFocus({ label: 'Remove Where', index: '1' }, 'after removing');
    if (await order() !== 'List,Where') throw new Error(`the order is ${await order()}`);
    // Edit "Where" to full width; after the update focus goes back to its Edit button.
    await tabTo(p, 'button[aria-label="Edit Where"]', 5, 'Shift+Tab');
    await p.keyboard.press('Enter');
    await expectFocus({ id: 'widget-title' }, 'after Edit');
    if (await p.inputValue('#widget-title') !== 'Where') throw new Error('the widget did not load');
    await p.keyboard.press('Tab');
    await p.keyboard.type('Full');
    await p.keyboard.press('Shift+Tab');
    await p.keyboard.press('Enter');
    await expectFocus({ label: 'Edit Where' }, 'after the update');
    if (!(await p.textContent('#widget-list li[data-index="1"]')).includes('4 columns')) throw new Error('the width did not change');
    // Save: the editor closes and focus goes to the dashboard's heading.
    await tabTo(p, '#dashboard-save');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#dashboard-editor', { state: 'hidden' });
    await p.waitForFunction(() => document.activeElement?.tagName === 'H1' && document.activeElement.textContent === 'Keyboard room');
    await p.waitForSelector('#widget-0 td[data-key="temperature"]');
    await p.waitForSelector('#widget-1 svg.map circle.marker');
    // The toolbar: zoom, earlier, live, the window select by arrow key, edit and cancel.
    await tabTo(p, '#dash-zoom-in');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#dashboard-range:has-text("(30 min)")');
    await tabTo(p, '#dash-earlier');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#dash-live[aria-pressed="false"]');
    await tabTo(p, '#dash-live');
    await p.keyboard.press('Space');
    await p.waitForSelector('#dash-live[aria-pressed="true"]');
    await p.waitForSelector('#dashboard-range:has-text("(60 min)")');
    await tabTo(p, '#dashboard-window-view', 6, 'Shift+Tab');
    await p.keyboard.press('ArrowDown');
    await p.waitForSelector('#dashboard-range:has-text("(6 h)")');
    await tabTo(p, '#dashboard-edit');
    await p.keyboard.press('Enter');
    await p.waitForFunction(() => document.activeElement?.id === 'editor-h');
    await tabTo(p, '#dashboard-cancel', 80);
    await p.keyboard.press('Enter');
    await p.waitForSelector('#dashboard-editor', { state: 'hidden' });
    await expectFocus({ id: 'dashboard-edit' }, 'after Cancel');
    // The table's link and the map's marker: reached by Tab, named, with a visible focus.
    await tabTo(p, '#widget-0 td a, #widget-0 th a', 10);
    await tabTo(p, '#widget-1 svg a', 80);
    const marker = await p.evaluate(() => ({ label: document.activeElement.getAttribute('aria-label'), stroke: getComputedStyle(document.activeElement.querySelector('circle')).stroke }));
    if (!/^thermo-1, online, at 48\.85, 2\.35$/.test(marker.label)) throw new Error(`the marker is named "${marker.label}"`);
    if (marker.stroke !== 'rgb(0, 0, 0)') throw new Error(`the focused marker's stroke is ${marker.stroke}`);
    if (await p.getByRole('link', { name: 'thermo-1, online, at 48.85, 2.35' }).count() !== 1) throw new Error('the marker is not a named link');
    await shot(p, '12b-keyboard-dashboard');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#command-form');
    if (!p.url().includes('#/devices/')) throw new Error(`the marker led to ${p.url()}`);
    await kb.close();
  });

  await step('map tiles: a server with [ui] tile_url draws its tiles (allowed by its CSP) and places the markers on them', async () => {
    const tiles = await startTileServer();
    try {
      const log = [];
      const t0 = Date.now();
      const other = await startServer(adminKey, { dir: join(dataDir, 'tiles'), env: { CORRAL_UI__TILE_URL: tiles.url }, log });
      console.log(`# a second corral with tile_url ${tiles.url} started in ${Date.now() - t0} ms`);
      const base2 = `http://${other.http}`;
      const rest2 = restAt(base2);
      const csp = (await fetch(`${base2}/`)).headers.get('content-security-policy') || '';
      if (!csp.includes(`img-src 'self' data: ${tiles.origin}`)) throw new Error(`the CSP is "${csp}"`);
      const ws2 = await rest2('POST', '/workspaces', { name: 'Harbour' });
      const fleet2 = await rest2('POST', '/fleets', { workspace_id: ws2.id, name: 'buoys' });
      const buoys = [['buoy-null', 0, 0], ['buoy-north', 60, 90]];
      for (const [name, latitude, longitude] of buoys) {
        const { credentials } = await rest2('POST', '/devices', { fleet_id: fleet2.id, name });
        const r = await fetch(`${base2}/api/v1/${credentials.token}/telemetry`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ latitude, longitude }) });
        if (!r.ok) throw new Error(`telemetry: ${r.status}`);
      }
      const dash = await rest2('POST', '/dashboards', { workspace_id: ws2.id, fleet_id: fleet2.id, name: 'Harbour', window: { last_mins: 60 }, widgets: [{ kind: 'map', title: 'Buoys', width: 4 }] });
      const c = await browser.newContext({ viewport: { width: 1280, height: 860 } });
      const p = await c.newPage();
      p.setDefaultTimeout(STEP_MS);
      guard(p, problems);
      const blocked = [];
      p.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) blocked.push(m.text()); });
      await signInWithKey(p, base2, adminKey);
      await p.goto(`${base2}/#/dashboards/${dash.id}`);
      await p.waitForSelector('#widget-0 svg.map.tiles[data-tiles-loaded="16"]');
      const want = [];
      for (let x = 0; x < 4; x++) for (let y = 0; y < 4; y++) want.push(`/2/${x}/${y}.png`);
      const missing = want.filter((u) => !tiles.seen.includes(u));
      if (missing.length) throw new Error(`the tile server was not asked for ${missing.join(' ')} (it saw ${tiles.seen.join(' ')})`);
      if (await p.getAttribute('#widget-0 svg.map', 'data-tiles-failed')) throw new Error('some tiles failed to load');
      if (await p.isVisible('#widget-0 .tiles-note')) throw new Error('the map says tiles failed');
      // Markers in Web Mercator on the 1,024-unit world of zoom 2: (0, 0) at the middle; 60° N,
      // 90° E three quarters across and about 0.29 down.
      const at = async (name) => p.$eval(`#widget-0 svg a[aria-label^="${name}, "] circle`, (el) => [Number(el.getAttribute('cx')), Number(el.getAttribute('cy'))]);
      const [x0, y0] = await at('buoy-null');
      if (x0 !== 512 || y0 !== 512) throw new Error(`buoy-null at ${x0}, ${y0}`);
      const [x1, y1] = await at('buoy-north');
      const yn = (1 - Math.log(Math.tan(Math.PI / 3) + 1 / Math.cos(Math.PI / 3)) / Math.PI) / 2 * 1024;
      if (Math.abs(x1 - 768) > 0.01 || Math.abs(y1 - yn) > 0.01) throw new Error(`buoy-north at ${x1}, ${y1} (want 768, ${yn.toFixed(2)})`);
      await p.waitForSelector('#widget-0 details.map-list summary:text("2 of 2 devices report a position")');
      if (blocked.length) throw new Error(blocked.join('; '));
      await p.locator('#widget-0').screenshot({ path: join(artifacts, '06e-dashboard-tiles.png') });
      await c.close();
      other.proc.kill('SIGTERM');
    } finally {
      await tiles.close();
    }
  });

  await step('the first load (sign-in to the overview drawn) weighs under 300 KB', async () => {
    // A fresh browser: nothing cached. Every response's body counts, the API's too.
    const fresh = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    try {
      const p = await fresh.newPage();
      let bytes = 0;
      const files = [];
      p.on('response', async (r) => {
        try {
          const n = (await r.body()).length;
          bytes += n;
          files.push([new URL(r.url()).pathname, n]);
        } catch { /* an event stream or a redirect has no body to read */ }
      });
      await signInWithKey(p, base, adminKey);
      await p.waitForSelector('#overview-fleets, main h1:text("Overview")');
      await p.waitForTimeout(500);
      const ui = files.filter(([f]) => f === '/' || f.startsWith('/ui/'));
      const uiBytes = ui.reduce((a, [, n]) => a + n, 0);
      console.log(`# first load: ${ui.length} UI files, ${(uiBytes / 1024).toFixed(1)} KiB (uncompressed; the server sends them as they are); ${(bytes / 1024).toFixed(1)} KiB with the API's answers`);
      if (uiBytes > 300 * 1024) throw new Error(`the first load is ${uiBytes} bytes: ${JSON.stringify(ui)}`);
      if (ui.some(([f]) => f.includes('/pages/') && !/login|overview/.test(f))) {
        throw new Error(`pages not visited were loaded: ${JSON.stringify(ui.map(([f]) => f))}`);
      }
    } finally {
      await fresh.close();
    }
  });

  await step('sign-in throttling is explained', async () => {
    // Last: it throttles this address for a while.
    const c = await browser.newContext();
    const p = await c.newPage();
    p.setDefaultTimeout(STEP_MS);
    guard(p, problems);
    await p.goto(`${base}/`);
    await p.waitForSelector('#login-form');
    for (let i = 0; i < 20; i++) {
      await p.fill('#login-username', 'nobody');
      await p.fill('#login-password', `wrong ${i}`);
      await p.click('#login-form button[type=submit]');
      await p.waitForFunction(() => document.getElementById('login-error').textContent !== '');
      if ((await p.textContent('#login-error')).includes('Too many attempts')) break;
      await p.evaluate(() => { document.getElementById('login-error').textContent = ''; });
    }
    await p.waitForSelector('#login-error:text("Too many attempts")', { timeout: 1000 });
    await c.close();
  });

  await step('no script errors and no CSP violations', async () => {
    if (problems.length) throw new Error(problems.join('; '));
  });
}

async function readDownload(d) {
  const path = await d.path();
  return (await import('node:fs')).readFileSync(path, 'utf8');
}

/**
 * Chooses the device `name` in a dashboard editor's device picker (`id`: `widget-devices` or
 * `widget-device`) through its search, which the server answers.
 */
async function pickDevice(page, id, name) {
  await page.fill(`#${id}-search`, name);
  await page.click(`#${id}-results button[aria-label="Add ${name}"]`);
  await page.waitForSelector(`#${id}-chosen li:has-text("${name}")`);
}

/** Presses Tab (or `key`, such as Shift+Tab) until `selector` has focus (at most `max` times). */
async function tabTo(page, selector, max = 40, key = 'Tab') {
  for (let i = 0; i < max; i++) {
    const target = page.locator(selector).first();
    if (await target.count() && await target.evaluate((el) => el === document.activeElement)) {
      // The focused element must show a focus ring.
      const ring = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
      if (ring === 'none') throw new Error(`${selector} has no visible focus style`);
      return;
    }
    await page.keyboard.press(key);
  }
  throw new Error(`${selector} not reached with ${max} ${key} presses`);
}

let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  if (!results.some(([, ok]) => !ok)) console.log(`not ok - setup: ${e.message}`);
  try {
    for (const ctx of browser?.contexts() ?? []) {
      for (const [i, p] of ctx.pages().entries()) await p.screenshot({ path: join(artifacts, `failure-${i}.png`), fullPage: true }).catch(() => {});
    }
  } catch { /* best effort */ }
}
const passed = results.filter(([, ok]) => ok).length;
const failed = results.length - passed + (code && !results.some(([, ok]) => !ok) ? 1 : 0);
console.log(`${passed} passed, ${failed} failed`);
console.log(`# screenshots in ${artifacts}`);
clearTimeout(watchdog);
shutdown(failed ? 1 : 0);
