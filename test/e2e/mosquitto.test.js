'use strict';
// Plain MQTT 3.1.1 clients (Debian mosquitto-clients) speaking the IoT Hub
// device protocol by hand: SAS token computed here, topic ACLs enforced.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const h = require('./lib/hub');

const hub = h.attachHub();
const haveMosquitto = spawnSync('sh', ['-c', 'command -v mosquitto_pub && command -v mosquitto_sub']).status === 0;
const T = { timeout: 60000, skip: haveMosquitto ? false : 'mosquitto_pub/mosquitto_sub not installed (apt-get install mosquitto-clients)' };

let monitor; // all devices
let dev;
let other;

before(async () => {
  if (!haveMosquitto) return;
  dev = await hub.newDevice('mosq');
  other = await hub.newDevice('mosq-other');
  monitor = await hub.monitor();
});

after(async () => { if (monitor) await monitor.stop(); });

function connArgs(d, { password } = {}) {
  const token = password || h.sasToken(`${hub.host}/devices/${d.id}`, d.key);
  return [
    '-h', hub.addr, '-p', '8883', '--cafile', hub.caPath, '-V', 'mqttv311',
    '-i', d.id, '-u', `${hub.host}/${d.id}/?api-version=2021-04-12`, '-P', token,
  ];
}

function pub(d, topic, payload, extra = [], opts = {}) {
  return h.run('mosquitto_pub', [...connArgs(d, opts), '-t', topic, '-m', payload, '-q', '1', '-d', ...extra], { timeout: 20000 });
}

// startSub runs mosquitto_sub in the background and lets the test watch its output.
function startSub(d, topic, extra = []) {
  // stdbuf: mosquitto_sub writes its -d log with stdio, fully buffered on a pipe
  const p = spawn('stdbuf', ['-oL', '-eL', 'mosquitto_sub', ...connArgs(d), '-t', topic, '-q', '1', '-d', '-v', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  const s = { out: '', err: '', proc: p };
  p.stdout.on('data', (x) => { s.out += x; });
  p.stderr.on('data', (x) => { s.err += x; });
  s.exited = new Promise((resolve) => p.on('close', (code, signal) => resolve({ code, signal })));
  s.stop = async () => {
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await h.withTimeout(s.exited, 5000, 'mosquitto_sub to exit').catch(() => p.kill('SIGKILL'));
  };
  return s;
}

test('mosquitto_pub with a SAS token computed in JS publishes telemetry with properties', T, async () => {
  const payload = `hello from mosquitto ${h.uniqueId('p')}`;
  const r = await pub(dev, `devices/${dev.id}/messages/events/a=b&sp%20ace=x%2Fy&%24.mid=mosq-1`, payload);
  assert.equal(r.code, 0, `mosquitto_pub failed: ${r.stdout} ${r.stderr}`);
  assert.match(r.stdout, /received CONNACK \(0\)/);
  assert.match(r.stdout, /received PUBACK/);
  const ev = await monitor.waitFor((e) => e.payload === payload, 10000, 'the mosquitto message');
  assert.equal(ev.origin, dev.id);
  assert.deepEqual(h.app(ev), { a: 'b', 'sp ace': 'x/y' });
  assert.equal(h.sys(ev, 'message-id'), 'mosq-1');
});

// The hub parks a connection quiet for 2 s on its socket under a small stack
// (mochi's idle wait); the next packet must be read as before, over TLS.
test('one mosquitto_pub connection publishes again after idling past the hub\'s idle wait', T, async () => {
  const tag = h.uniqueId('idle');
  const p = spawn('mosquitto_pub', [...connArgs(dev), '-t', `devices/${dev.id}/messages/events/`, '-q', '1', '-l', '-d']);
  let out = '';
  p.stdout.on('data', (b) => { out += b; });
  p.stderr.on('data', (b) => { out += b; });
  const exited = new Promise((resolve) => p.on('close', resolve));
  try {
    for (let i = 0; i < 3; i++) {
      p.stdin.write(`${tag} ${i}\n`);
      await monitor.waitFor((e) => e.payload === `${tag} ${i}`, 10000, `line ${i} after ${i} idle periods (output: ${out})`);
      await h.sleep(3000);
    }
  } finally {
    p.stdin.end();
    assert.equal(await h.withTimeout(exited, 10000, 'mosquitto_pub to exit'), 0, `mosquitto_pub: ${out}`);
  }
  assert.equal((out.match(/received CONNACK/g) || []).length, 1, `one connection for all three lines: ${out}`);
});

test('a wrong SAS signature is refused with CONNACK 5 (not authorised)', T, async () => {
  const bad = h.sasToken(`${hub.host}/devices/${dev.id}`, Buffer.alloc(32, 4).toString('base64'));
  const r = await pub(dev, `devices/${dev.id}/messages/events/`, 'never', [], { password: bad });
  assert.notEqual(r.code, 0);
  assert.match(r.stdout + r.stderr, /not authori[sz]ed/i);
});

test('an expired SAS token is refused', T, async () => {
  const expired = h.sasToken(`${hub.host}/devices/${dev.id}`, dev.key, Math.floor(Date.now() / 1000) - 60);
  const r = await pub(dev, `devices/${dev.id}/messages/events/`, 'never', [], { password: expired });
  assert.notEqual(r.code, 0);
  assert.match(r.stdout + r.stderr, /not authori[sz]ed/i);
});

test("publishing to another device's telemetry topic is refused and never delivered", T, async () => {
  const payload = `spoofed ${h.uniqueId('s')}`;
  const r = await pub(dev, `devices/${other.id}/messages/events/`, payload);
  // MQTT 3.1.1 has no negative PUBACK: the hub must close the connection instead
  assert.doesNotMatch(r.stdout, /received PUBACK/, `the hub acknowledged a publish to another device's topic: ${r.stdout}`);
  assert.notEqual(r.code, 0, `mosquitto_pub exited 0: ${r.stdout} ${r.stderr}`);
  // a good message after it proves the monitor has caught up
  const good = `after spoof ${h.uniqueId('g')}`;
  const r2 = await pub(dev, `devices/${dev.id}/messages/events/`, good);
  assert.equal(r2.code, 0, r2.stdout + r2.stderr);
  await monitor.waitFor((e) => e.payload === good, 10000, 'the good message');
  assert.ok(!monitor.events.items.some((e) => e.payload === payload), 'the spoofed message reached monitor-events');
});

test('a publish outside the IoT Hub topics is not device telemetry', T, async () => {
  // moat deliberately accepts plain (non-$iothub, non-devices/) topics (see
  // internal/mqttdevice/topics.go); IoT Hub would close the connection. Either
  // way the message must not show up as telemetry.
  const payload = `plain topic ${h.uniqueId('pt')}`;
  await pub(dev, 'some/random/topic', payload);
  const good = `after plain ${h.uniqueId('g')}`;
  const r2 = await pub(dev, `devices/${dev.id}/messages/events/`, good);
  assert.equal(r2.code, 0, r2.stdout + r2.stderr);
  await monitor.waitFor((e) => e.payload === good, 10000, 'the good message');
  assert.ok(!monitor.events.items.some((e) => e.payload === payload), 'a plain-topic publish showed up as telemetry');
});

test("subscribing to another device's C2D topic is refused and gets nothing", T, async (t) => {
  const s = startSub(dev, `devices/${other.id}/messages/devicebound/#`, ['-W', '6']);
  try {
    // wait until the SUBSCRIBE has been answered (SUBACK) or the connection is gone
    await h.waitFor(() => /received SUBACK|Connection error|lost/i.test(s.out + s.err) || s.proc.exitCode !== null,
      { timeout: 10000, what: 'a SUBACK or a disconnect for the forbidden subscription' });
    const secret = h.uniqueId('secret');
    await hub.cliOK(['device', 'send-c2d', '-d', other.id, '--data', secret]);
    const { code } = await h.withTimeout(s.exited, 15000, 'mosquitto_sub to end');
    const all = s.out + s.err;
    t.diagnostic(`mosquitto_sub exit ${code}: ${all.replace(/\n/g, ' | ')}`);
    assert.doesNotMatch(all, /Subscribed \(mid: \d+\): [012]\b/, `the hub granted the subscription: ${all}`);
    assert.ok(!all.includes(secret), "another device's C2D message was delivered");
    // 0x80 in the SUBACK: mosquitto_sub 2.0 prints the 128, disconnects and exits 0
    assert.match(all, /Subscribed \(mid: \d+\): 128\b/, `no SUBACK 0x80: ${all} (exit ${code})`);
    assert.match(all, /All subscription requests were denied/);
  } finally {
    await s.stop();
  }
});

test('mosquitto_sub on its own C2D topic receives a message sent with the CLI', T, async () => {
  const sub = await hub.newDevice('mosq-sub');
  const s = startSub(sub, `devices/${sub.id}/messages/devicebound/#`, ['-C', '1', '-W', '20']);
  try {
    await h.waitFor(() => /received SUBACK/.test(s.out), { timeout: 10000, what: 'SUBACK for the own C2D topic' });
    assert.match(s.out, /Subscribed \(mid: \d+\): 1\b/, `granted QoS 1: ${s.out}`);
    const mid = h.uniqueId('mc2d');
    await hub.cliOK(['device', 'send-c2d', '-d', sub.id, '--data', 'c2d to mosquitto', '--message-id', mid, '--props', 'k=v/w']);
    const { code } = await h.withTimeout(s.exited, 15000, 'mosquitto_sub to get one message');
    assert.equal(code, 0, s.out + s.err);
    const line = s.out.split('\n').find((l) => l.startsWith(`devices/${sub.id}/messages/devicebound/`));
    assert.ok(line, `no devicebound message in: ${s.out}`);
    const [topic, ...rest] = line.split(' ');
    assert.equal(rest.join(' '), 'c2d to mosquitto');
    const bag = topic.slice(`devices/${sub.id}/messages/devicebound/`.length);
    assert.ok(!bag.includes('/'), `every '/' in the property bag must be percent-encoded: ${bag}`);
    const props = Object.fromEntries(bag.split('&').filter(Boolean).map((kv) => kv.split('=').map(decodeURIComponent)));
    assert.equal(props['$.mid'], mid);
    assert.equal(props.k, 'v/w');
  } finally {
    await s.stop();
  }
});

// rxQueued is how many bytes wait unread in the TCP receive queues of a process
// (from /proc/<pid>/fd and /proc/net/tcp*): with the process stopped, a count
// above zero means the hub has written something to it that it has not read.
function rxQueued(pid) {
  const fs = require('node:fs');
  const inodes = new Set();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch { /* closed meanwhile */ }
  }
  let n = 0;
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try { text = fs.readFileSync(f, 'utf8'); } catch { continue; }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length > 9 && inodes.has(cols[9])) n += parseInt(cols[4].split(':')[1], 16);
    }
  }
  return n;
}

test('a C2D message in flight at a clean=false takeover is resent once by the session, not sent again, and completed', T, async () => {
  const d = await hub.newDevice('mosq-takeover');
  const topic = `devices/${d.id}/messages/devicebound/#`;
  const prefix = `devices/${d.id}/messages/devicebound/`;
  const copies = (s, payload) => s.out.split('\n').filter((l) => l.startsWith(prefix) && l.endsWith(` ${payload}`)).length;
  const reg = await hub.registry();
  const queued = async () => (await reg.get(d.id)).responseBody.cloudToDeviceMessageCount;

  // first connection: persistent session (-c), QoS 1 subscription granted
  const old = startSub(d, topic, ['-c']);
  let takeover;
  try {
    await h.waitFor(() => /received SUBACK/.test(old.out), { timeout: 10000, what: 'SUBACK for the first connection' });
    assert.match(old.out, /Subscribed \(mid: \d+\): 1\b/, `granted QoS 1: ${old.out}`);
    // No message before the one held in flight: it gets packet id 1, the id
    // the new connection's SUBSCRIBE uses too. The directions' ids are
    // separate in MQTT (mochi alone would refuse that SUBSCRIBE with 0x91).
    await h.waitFor(() => rxQueued(old.proc.pid) === 0, { timeout: 5000, what: 'the first connection to read everything' });
    // freeze it: it keeps its TCP connection but can neither read nor PUBACK
    old.proc.kill('SIGSTOP');

    const first = `in flight ${h.uniqueId('c2d1')}`;
    await hub.cliOK(['device', 'send-c2d', '-d', d.id, '--data', first]);
    // the PUBLISH is in the frozen client's receive queue: mochi holds it in flight
    await h.waitFor(() => rxQueued(old.proc.pid) > 0, { timeout: 10000, what: 'the hub to write the C2D PUBLISH to the frozen connection' });
    assert.equal(copies(old, first), 0, 'the frozen client printed the message');
    assert.equal(await queued(), 1, 'the unacknowledged message is still queued');

    // second connection, same client id, clean=false: takes the session over
    takeover = startSub(d, topic, ['-c']);
    await h.waitFor(() => copies(takeover, first) >= 1, { timeout: 10000, what: 'the in-flight message on the new connection' });
    old.proc.kill('SIGKILL');
    // it came from the session's resend (DUP set), so it really was in flight
    assert.match(takeover.out, /received PUBLISH \(d1, q1, r0, m1, 'devices\//, `not a session resend: ${takeover.out}`);
    await h.waitFor(() => /Subscribed \(mid: \d+\): /.test(takeover.out), { timeout: 10000, what: 'SUBACK on the new connection' });
    assert.equal(copies(takeover, first), 1, `a second copy of the in-flight message after the takeover:\n${takeover.out}`);
    assert.match(takeover.out, /Subscribed \(mid: \d+\): 1\b/, `granted QoS 1 on the new connection: ${takeover.out}`);

    // a later message is delivered normally; on the same connection it follows
    // anything the hub sent for the first one, so by now a second copy would show
    const second = `after takeover ${h.uniqueId('c2d2')}`;
    await hub.cliOK(['device', 'send-c2d', '-d', d.id, '--data', second]);
    await h.waitFor(() => copies(takeover, second) >= 1 || copies(takeover, first) > 1, { timeout: 10000, what: 'the message sent after the takeover' });
    assert.equal(copies(takeover, first), 1, `a second copy of the in-flight message after the takeover:\n${takeover.out}`);
    // both PUBACKed and completed: nothing is left in the queue
    await h.waitFor(async () => (await queued()) === 0, { timeout: 10000, what: 'cloudToDeviceMessageCount 0 (both messages completed)' });
    assert.equal(copies(takeover, first), 1, `the in-flight message must arrive exactly once after the takeover:\n${takeover.out}`);
    assert.equal(copies(takeover, second), 1, `the later message must arrive exactly once:\n${takeover.out}`);
  } finally {
    if (old.proc.exitCode === null && old.proc.signalCode === null) old.proc.kill('SIGKILL');
    await h.withTimeout(old.exited, 5000, 'the frozen mosquitto_sub to exit').catch(() => {});
    if (takeover) await takeover.stop();
  }
});
