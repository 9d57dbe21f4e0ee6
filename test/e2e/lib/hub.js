'use strict';
// Harness for the end-to-end suite: starts and stops `moat serve` on a loopback
// address of its own, runs the moat CLI against it, follows `moat monitor-events`,
// and opens official-SDK device clients that trust the hub's private CA.
//
// Two sides use it:
//   - run.js (the runner) calls startHub() once per test file, before that file's
//     node process starts, because NODE_EXTRA_CA_CERTS (the only way to make
//     azure-iothub trust a private CA) is read when a process starts;
//   - test files call attachHub(), which reads the hub the runner started from
//     the MOAT_E2E_* environment variables.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const E2E_DIR = path.resolve(__dirname, '..');

function moatBin() {
  return process.env.MOAT_BIN
    ? path.resolve(process.env.MOAT_BIN)
    : path.resolve(E2E_DIR, '..', '..', 'bin', 'moat');
}

// ---------------------------------------------------------------- waiting

class TimeoutError extends Error {}

// withTimeout rejects when p has not settled after ms; what names the wait in
// the message so a failing test says what it was waiting for.
function withTimeout(p, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([Promise.resolve(p), t]).finally(() => clearTimeout(timer));
}

// waitFor polls fn (sync or async) until it returns a truthy value, and returns it.
async function waitFor(fn, { timeout = 10000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) {
      const why = lastErr ? ` (last error: ${lastErr.message})` : '';
      throw new TimeoutError(`timed out after ${timeout} ms waiting for ${what}${why}`);
    }
    await sleep(interval);
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// An event log that tests can await: push() values, then waitFor a match.
class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }
  push(v) {
    this.items.push(v);
    for (const w of [...this.waiters]) {
      if (w.pred(v)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(v);
      }
    }
  }
  // waitFor resolves with the first item (already received or future) matching pred.
  waitFor(pred = () => true, timeout = 10000, what = this.name) {
    const found = this.items.find(pred);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new TimeoutError(`timed out after ${timeout} ms waiting for ${what}; have ${this.items.length} item(s)`));
      }, timeout);
      this.waiters.push(w);
    });
  }
}

// ---------------------------------------------------------------- processes

// run executes a program and resolves with {code, signal, stdout, stderr}; it never
// rejects on a non-zero exit, and kills the program after timeout ms.
function run(file, args, { timeout = 30000, env, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: env || process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, timeout);
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
    if (input !== undefined) child.stdin.end(input);
    else child.stdin.end();
  });
}

// ---------------------------------------------------------------- hub process

function hubArgs(addr, dataDir, extra = []) {
  return [
    'serve',
    '--data-dir', dataDir,
    '--hostname', addr,
    '--mqtt-addr', `${addr}:8883`,
    '--https-addr', `${addr}:443`,
    '--mqtt-plain-addr', `${addr}:1883`,
    '--metrics-addr', `${addr}:9090`,
    '--log-level', process.env.MOAT_E2E_LOG_LEVEL || 'debug',
    ...extra,
  ];
}

// startHub starts `moat serve` on addr with a fresh data dir and resolves once
// the log says `moat hub ready`. The log (stdout and stderr) goes to logFile.
async function startHub({ addr, dataDir, logFile, readyTimeout = 20000, extraArgs = [] }) {
  const bin = moatBin();
  if (!fs.existsSync(bin)) {
    throw new Error(`moat binary not found at ${bin} (build it with "make build" or set MOAT_BIN)`);
  }
  dataDir = dataDir || fs.mkdtempSync(path.join(os.tmpdir(), 'moat-e2e-'));
  logFile = logFile || path.join(dataDir, 'hub.log');
  const log = fs.openSync(logFile, 'a');
  const proc = spawn(bin, hubArgs(addr, dataDir, extraArgs), { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const hub = { addr, host: addr, dataDir, logFile, proc, exited, bin };
  hub.log = () => { try { return fs.readFileSync(logFile, 'utf8'); } catch { return ''; } };

  let exitInfo = null;
  exited.then((e) => { exitInfo = e; });
  try {
    await waitFor(() => {
      if (exitInfo) throw new Error(`moat serve exited early (code ${exitInfo.code}, signal ${exitInfo.signal})`);
      return /moat hub ready/.test(hub.log());
    }, { timeout: readyTimeout, interval: 50, what: '"moat hub ready" in the hub log' });
    if (exitInfo) throw new Error(`moat serve exited early (code ${exitInfo.code}, signal ${exitInfo.signal})`);
  } catch (err) {
    proc.kill('SIGKILL');
    err.message += `\n--- hub log (${logFile}) ---\n${tail(hub.log(), 40)}`;
    throw err;
  }
  hub.caPath = path.join(dataDir, 'pki', 'ca.pem');
  if (!fs.existsSync(hub.caPath)) {
    proc.kill('SIGKILL');
    throw new Error(`hub is ready but ${hub.caPath} does not exist`);
  }
  return hub;
}

// stopHub sends SIGTERM and resolves with {code, signal}; it kills the hub and
// rejects if it has not exited after timeout ms.
async function stopHub(hub, timeout = 15000) {
  if (hub.proc.exitCode === null && hub.proc.signalCode === null) hub.proc.kill('SIGTERM');
  try {
    return await withTimeout(hub.exited, timeout, 'moat serve to exit after SIGTERM');
  } catch (err) {
    hub.proc.kill('SIGKILL');
    throw err;
  }
}

function tail(text, n) {
  const lines = text.split('\n');
  return lines.slice(Math.max(0, lines.length - n - 1)).join('\n');
}

// ---------------------------------------------------------------- the hub as a test file sees it

class Hub {
  constructor({ addr, dataDir, logFile }) {
    this.addr = addr;
    this.host = addr;
    this.dataDir = dataDir;
    this.logFile = logFile;
    this.caPath = path.join(dataDir, 'pki', 'ca.pem');
    this.caPem = fs.readFileSync(this.caPath, 'utf8');
    this.bin = moatBin();
    this._serviceCs = null;
  }

  log() {
    try { return fs.readFileSync(this.logFile, 'utf8'); } catch { return ''; }
  }

  // cli runs `moat <args> --data-dir DIR` and resolves with {code, stdout, stderr}.
  cli(args, opts = {}) {
    return run(this.bin, [...args, '--data-dir', this.dataDir], opts);
  }

  // cliOK runs the CLI, requires exit 0 and returns stdout.
  async cliOK(args, opts) {
    const r = await this.cli(args, opts);
    if (r.code !== 0) {
      throw new Error(`moat ${args.join(' ')} exited ${r.code}${r.timedOut ? ' (timed out)' : ''}: ${r.stderr.trim()}`);
    }
    return r.stdout;
  }

  // cliJSON runs the CLI, requires exit 0 and parses stdout as JSON.
  async cliJSON(args, opts) {
    const out = await this.cliOK(args, opts);
    try {
      return JSON.parse(out);
    } catch (err) {
      throw new Error(`moat ${args.join(' ')} printed no JSON (${err.message}): ${out.slice(0, 500)}`);
    }
  }

  async serviceCs() {
    if (!this._serviceCs) {
      this._serviceCs = connectionStringFromOutput(await this.cliOK(['hub', 'show-connection-string']));
    }
    return this._serviceCs;
  }

  // createDevice creates a device through the CLI and returns the device JSON.
  createDevice(id, extra = []) {
    return this.cliJSON(['device', 'create', '-d', id, ...extra]);
  }

  async deviceCs(id, moduleId) {
    const args = ['device', 'show-connection-string', '-d', id];
    if (moduleId) args.push('-m', moduleId);
    return connectionStringFromOutput(await this.cliOK(args));
  }

  // registry is an azure-iothub Registry for this hub (the official service SDK).
  async registry() {
    if (!this._registry) this._registry = require('azure-iothub').Registry.fromConnectionString(await this.serviceCs());
    return this._registry;
  }

  // serviceClient is an azure-iothub Client (direct methods over REST).
  async serviceClient() {
    if (!this._serviceClient) this._serviceClient = require('azure-iothub').Client.fromConnectionString(await this.serviceCs());
    return this._serviceClient;
  }

  // newDevice registers a device through the service SDK and returns its id,
  // primary key and device connection string.
  async newDevice(prefix, extra = {}) {
    const id = uniqueId(prefix);
    const reg = await this.registry();
    const d = (await reg.create({ deviceId: id, ...extra })).responseBody;
    const key = d.authentication.symmetricKey.primaryKey;
    return { id, key, cs: `HostName=${this.host};DeviceId=${id};SharedAccessKey=${key}` };
  }

  // newModule registers a module on an existing device.
  async newModule(deviceId, moduleId) {
    const reg = await this.registry();
    const m = (await reg.addModule({ deviceId, moduleId })).responseBody;
    const key = m.authentication.symmetricKey.primaryKey;
    return { deviceId, moduleId, key, cs: `HostName=${this.host};DeviceId=${deviceId};ModuleId=${moduleId};SharedAccessKey=${key}` };
  }

  // monitor starts `moat monitor-events` and resolves once it is listening.
  async monitor({ device, timeout = 15000 } = {}) {
    const m = new Monitor(this, { device });
    await m.started(timeout);
    return m;
  }
}

// connectionStringFromOutput accepts the forms a CLI may print a connection
// string in: the bare string, a JSON string, or {"connectionString": "..."}.
function connectionStringFromOutput(out) {
  const s = out.trim();
  if (s.startsWith('HostName=')) return s;
  let v;
  try { v = JSON.parse(s); } catch { throw new Error(`no connection string in CLI output: ${s.slice(0, 200)}`); }
  if (typeof v === 'string') return v;
  if (v && typeof v.connectionString === 'string') return v.connectionString;
  if (v && typeof v.cs === 'string') return v.cs;
  throw new Error(`no connection string in CLI output: ${s.slice(0, 200)}`);
}

let attached = null;

// attachHub returns the hub that run.js started for this test file.
function attachHub() {
  if (attached) return attached;
  const addr = process.env.MOAT_E2E_ADDR;
  const dataDir = process.env.MOAT_E2E_DATA_DIR;
  if (!addr || !dataDir) {
    throw new Error('no hub: run test files through the runner, e.g. `node run.js twin.test.js` in test/e2e');
  }
  attached = new Hub({ addr, dataDir, logFile: process.env.MOAT_E2E_HUB_LOG });
  return attached;
}

// ---------------------------------------------------------------- monitor-events

// monitors still running when the test process exits are killed with it
const liveMonitors = new Set();
process.on('exit', () => {
  for (const p of liveMonitors) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
});

class Monitor {
  constructor(hub, { device } = {}) {
    const args = ['monitor-events', '--properties', 'all', '--data-dir', hub.dataDir];
    if (device) args.push('-d', device);
    this.events = new Inbox('monitor-events output');
    this.stderr = '';
    this.badLines = [];
    this.proc = spawn(hub.bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    liveMonitors.add(this.proc);
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => {
      liveMonitors.delete(this.proc);
      resolve({ code, signal });
    }));
    let buf = '';
    this.proc.stdout.setEncoding('utf8');
    this.proc.stdout.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        try {
          const obj = JSON.parse(line);
          this.events.push(obj.event || obj);
        } catch {
          this.badLines.push(line);
        }
      }
    });
    this.proc.stderr.setEncoding('utf8');
    this.proc.stderr.on('data', (d) => { this.stderr += d; });
  }

  async started(timeout) {
    let exit = null;
    this.exited.then((e) => { exit = e; });
    await waitFor(() => {
      if (exit) throw new Error(`monitor-events exited ${exit.code}: ${this.stderr.trim()}`);
      return this.stderr.includes('Starting event monitor');
    }, { timeout, interval: 50, what: '"Starting event monitor" from moat monitor-events' });
  }

  // next resolves with the first event matching pred.
  waitFor(pred, timeout = 10000, what = 'an event in monitor-events') {
    return this.events.waitFor(pred, timeout, what);
  }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGINT');
    try {
      await withTimeout(this.exited, 5000, 'monitor-events to exit');
    } catch {
      this.proc.kill('SIGKILL');
    }
  }
}

// sys returns a system property of a monitor-events event.
function sys(ev, name) {
  const s = (ev.properties && ev.properties.system) || {};
  return s[name];
}

function app(ev) {
  return (ev.properties && ev.properties.application) || {};
}

// ---------------------------------------------------------------- SDK helpers

// openDevice opens an official-SDK client (device or module) that trusts the hub CA.
async function openDevice(hub, cs, { transport, module = false, options = {}, noRetry = false } = {}) {
  const dev = require('azure-iot-device');
  const T = transport || require('azure-iot-device-mqtt').Mqtt;
  const C = module ? dev.ModuleClient : dev.Client;
  const client = C.fromConnectionString(cs, T);
  return openClient(hub, client, { options, noRetry });
}

async function openClient(hub, client, { options = {}, noRetry = false } = {}) {
  client.errors = [];
  client.on('error', (err) => client.errors.push(err));
  if (noRetry) client.setRetryPolicy(noRetryPolicy);
  await client.setOptions({ ca: hub.caPem, ...options });
  try {
    await withTimeout(client.open(), 20000, 'device client open()');
  } catch (err) {
    await closeQuietly(client);
    throw err;
  }
  return client;
}

const noRetryPolicy = { shouldRetry: () => false, nextRetryTimeout: () => 0 };

// watchDesired adds a 'properties.desired' listener to a device twin and resolves
// with an Inbox of the (copied) patches once the SDK's SUBSCRIBE to the desired
// topic has been acknowledged. Adding the listener alone only starts that
// SUBSCRIBE; a patch sent before the SUBACK is, rightly, not delivered.
async function watchDesired(twin, what = 'properties.desired events') {
  const inbox = new Inbox(what);
  twin.on('properties.desired', (p) => inbox.push(JSON.parse(JSON.stringify(p))));
  await withTimeout(new Promise((resolve, reject) => {
    twin.enableTwinDesiredPropertiesUpdates((err) => (err ? reject(err) : resolve()));
  }), 10000, 'the desired-properties SUBACK');
  await inbox.waitFor(() => true, 10000, `the initial ${what}`);
  return inbox;
}

async function closeQuietly(client) {
  if (!client) return;
  try {
    await withTimeout(client.close(), 5000, 'client close()');
  } catch {
    // the test has its answer already; a close that fails must not hide it
  }
}

// errorName is the class name of an SDK error (the SDKs set .name inconsistently).
function errorName(err) {
  return (err && (err.constructor && err.constructor.name !== 'Error' ? err.constructor.name : err.name)) || String(err);
}

// expectReject awaits p, requires it to fail, and returns the error.
async function expectReject(p, what) {
  let result;
  try {
    result = await p;
  } catch (err) {
    return err;
  }
  throw new Error(`${what}: expected a failure, got success: ${safeJSON(result)}`);
}

function safeJSON(v) {
  try { return JSON.stringify(v, (k, x) => (k === 'httpResponse' || k === 'message' || k === 'response' ? undefined : x)).slice(0, 500); } catch { return String(v); }
}

// sasToken makes a device SAS token the way the SDKs do (sr URL-encoded, HMAC over it).
function sasToken(resourceUri, keyBase64, expirySeconds = Math.floor(Date.now() / 1000) + 3600, keyName) {
  const sr = encodeURIComponent(resourceUri);
  const sig = crypto.createHmac('sha256', Buffer.from(keyBase64, 'base64')).update(`${sr}\n${expirySeconds}`).digest('base64');
  let t = `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${expirySeconds}`;
  if (keyName) t += `&skn=${encodeURIComponent(keyName)}`;
  return t;
}

function parseCs(cs) {
  const out = {};
  for (const part of cs.split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}

let idCounter = 0;
function uniqueId(prefix) {
  idCounter += 1;
  return `${prefix}-${process.pid}-${idCounter}-${crypto.randomBytes(3).toString('hex')}`;
}

module.exports = {
  E2E_DIR,
  moatBin,
  TimeoutError,
  withTimeout,
  waitFor,
  sleep,
  Inbox,
  run,
  startHub,
  stopHub,
  tail,
  Hub,
  attachHub,
  Monitor,
  sys,
  app,
  openDevice,
  openClient,
  closeQuietly,
  watchDesired,
  noRetryPolicy,
  errorName,
  expectReject,
  sasToken,
  parseCs,
  uniqueId,
  connectionStringFromOutput,
};
