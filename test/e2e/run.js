#!/usr/bin/env node
'use strict';
// Runner for the end-to-end suite. For each test file it starts a hub on a
// loopback address of its own (so several files can hold ports 443 and 8883 at
// once), then runs the file with `node --test` in a process whose
// NODE_EXTRA_CA_CERTS is that hub's CA (azure-iothub has no CA option, and Node
// reads the variable only at start-up), then stops the hub with SIGTERM and
// requires exit code 0.
//
//   node run.js                      all *.test.js files
//   node run.js twin.test.js c2d     only these (".test.js" may be left off)
//   node run.js -- --test-name-pattern=timeout   extra arguments for node --test
//
// Environment: MOAT_BIN (default ../../bin/moat), MOAT_E2E_CONCURRENCY (4),
// MOAT_E2E_ADDR_BASE (20: first address 127.0.0.20), MOAT_E2E_FILE_TIMEOUT
// (seconds per file, 240), MOAT_E2E_KEEP=1 keeps every data dir and hub log.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { startHub, stopHub, tail, moatBin, E2E_DIR } = require('./lib/hub');

const concurrency = Number(process.env.MOAT_E2E_CONCURRENCY || 4);
const fileTimeout = Number(process.env.MOAT_E2E_FILE_TIMEOUT || 240) * 1000;
const addrBase = Number(process.env.MOAT_E2E_ADDR_BASE || 20);
const keep = process.env.MOAT_E2E_KEEP === '1';

// Everything this runner started, so that an interrupted run leaves no hub behind.
const live = new Set();
function killAll() {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    console.error(`e2e: ${sig}: stopping`);
    killAll();
    process.exit(130);
  });
}

function parseArgs(argv) {
  const files = [];
  const nodeArgs = [];
  let passthrough = false;
  for (const a of argv) {
    if (passthrough) nodeArgs.push(a);
    else if (a === '--') passthrough = true;
    else files.push(a.endsWith('.js') ? a : `${a}.test.js`);
  }
  return { files, nodeArgs };
}

function canBind(host, port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', (err) => resolve(err.code));
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

// pickAddress returns the next 127.0.0.x whose hub ports are all free, so a
// second run on the same machine (or a stale hub) does not collide with this one.
let nextOctet = addrBase;
async function pickAddress() {
  while (nextOctet < 255) {
    const addr = `127.0.0.${nextOctet++}`;
    let free = true;
    for (const port of [443, 8883, 1883, 9090]) {
      if ((await canBind(addr, port)) !== true) { free = false; break; }
    }
    if (free) return addr;
  }
  throw new Error('no free loopback address left in 127.0.0.0/24');
}

function runNodeTest(file, env, nodeArgs, countsFile) {
  return new Promise((resolve) => {
    const args = [
      '--test',
      '--test-reporter=spec', '--test-reporter-destination=stdout',
      `--test-reporter=${path.join(E2E_DIR, 'lib', 'count-reporter.js')}`, `--test-reporter-destination=${countsFile}`,
      ...nodeArgs,
      path.join(E2E_DIR, file),
    ];
    const child = spawn(process.execPath, args, { env, cwd: E2E_DIR, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, fileTimeout);
    child.on('close', (code, signal) => {
      live.delete(child);
      clearTimeout(timer);
      let counts = null;
      try { counts = JSON.parse(fs.readFileSync(countsFile, 'utf8')); } catch { /* crashed or killed */ }
      resolve({ code, signal, out, counts, timedOut });
    });
  });
}

async function runFile(file, nodeArgs) {
  const started = Date.now();
  const result = { file, passed: 0, failed: 0, skipped: 0, failures: [], out: '' };
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `moat-e2e-${path.basename(file, '.test.js')}-`));
  const logFile = path.join(dataDir, 'hub.log');
  let hub;
  try {
    const addr = await pickAddress();
    hub = await startHub({ addr, dataDir: path.join(dataDir, 'data'), logFile });
    live.add(hub.proc);
    const env = {
      ...process.env,
      MOAT_BIN: moatBin(),
      MOAT_E2E_ADDR: addr,
      MOAT_E2E_DATA_DIR: hub.dataDir,
      MOAT_E2E_HUB_LOG: logFile,
      NODE_EXTRA_CA_CERTS: hub.caPath,
    };
    const r = await runNodeTest(file, env, nodeArgs, path.join(dataDir, 'counts.json'));
    result.out = r.out;
    if (r.counts) Object.assign(result, r.counts);
    if (r.timedOut) {
      result.failed += 1;
      result.failures.push(`${file}: killed after ${fileTimeout / 1000} s`);
    } else if (r.code !== 0 && result.failed === 0) {
      result.failed += 1;
      result.failures.push(`${file}: node --test exited ${r.code} (signal ${r.signal})`);
    }
    result.addr = addr;
  } catch (err) {
    result.failed += 1;
    result.failures.push(`${file}: hub did not start: ${err.message}`);
  }
  if (hub) {
    try {
      const { code, signal } = await stopHub(hub);
      live.delete(hub.proc);
      if (code !== 0) {
        result.failed += 1;
        result.failures.push(`${file}: moat serve exited with code ${code} (signal ${signal}) after SIGTERM, want 0`);
      } else {
        result.passed += 1; // the clean shutdown is a check of its own
      }
    } catch (err) {
      result.failed += 1;
      result.failures.push(`${file}: ${err.message}`);
    }
  }
  result.seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (result.failed > 0) {
    result.hubLogTail = tail(readOr(logFile, ''), 80);
    result.kept = dataDir;
  } else if (!keep) {
    fs.rmSync(dataDir, { recursive: true, force: true });
  } else {
    result.kept = dataDir;
  }
  return result;
}

function readOr(file, dflt) {
  try { return fs.readFileSync(file, 'utf8'); } catch { return dflt; }
}

async function main() {
  const { files: wanted, nodeArgs } = parseArgs(process.argv.slice(2));
  const files = wanted.length
    ? wanted
    : fs.readdirSync(E2E_DIR).filter((f) => f.endsWith('.test.js')).sort();

  for (const f of files) {
    if (!fs.existsSync(path.join(E2E_DIR, f))) {
      console.error(`e2e: no such test file: ${f}`);
      process.exit(2);
    }
  }
  if (!fs.existsSync(moatBin())) {
    console.error(`e2e: moat binary not found at ${moatBin()}: run "make build" or set MOAT_BIN`);
    process.exit(2);
  }
  // The Node SDKs reach the hub on ports 443 and 8883 only; binding 443 needs root
  // (or CAP_NET_BIND_SERVICE). Without it nothing here can run.
  const probe = await canBind(`127.0.0.${addrBase}`, 443);
  if (probe === 'EACCES' || probe === 'EPERM') {
    console.log('e2e: SKIPPED: cannot bind port 443 on a loopback address (run as root or grant CAP_NET_BIND_SERVICE to node and moat); the official SDKs only use ports 443 and 8883.');
    console.log(`e2e: 0 passed, 0 failed, ${files.length} skipped`);
    return;
  }

  const t0 = Date.now();
  const results = [];
  const queue = [...files];
  async function worker() {
    while (queue.length) {
      const f = queue.shift();
      const r = await runFile(f, nodeArgs);
      results.push(r);
      process.stdout.write(`\n===== ${f} (hub ${r.addr || '-'}, ${r.seconds} s): ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped\n`);
      process.stdout.write(r.out);
      if (r.failed > 0) {
        for (const f2 of r.failures) process.stdout.write(`  FAILED: ${f2}\n`);
        process.stdout.write(`----- hub log tail (${r.kept}) -----\n${r.hubLogTail}\n-----\n`);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, files.length)) }, worker));

  const sum = (k) => results.reduce((n, r) => n + r[k], 0);
  const failed = sum('failed');
  console.log(`\n===== e2e summary (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  for (const r of results.sort((a, b) => a.file.localeCompare(b.file))) {
    console.log(`${r.failed ? 'FAIL' : 'ok  '} ${r.file}: ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped (${r.seconds} s)`);
  }
  console.log(`e2e: ${sum('passed')} passed, ${failed} failed, ${sum('skipped')} skipped`);
  process.exitCode = failed > 0 ? 1 : 0;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
