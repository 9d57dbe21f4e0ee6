'use strict';
// The IoT Operations dataflow case end to end: a plain `mosquitto_pub` on
// factory/line1/temp (Debian's mosquitto-clients, no Azure SDK) is routed by
// MqttTopics routes to an MQTT bridge on a real Mosquitto broker and to blob
// storage on Azurite (npm). This file runs its own hub, configured from a
// file, next to the runner's.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const h = require('./lib/hub');

const haveMosquitto = spawnSync('sh', ['-c', 'command -v mosquitto_pub && command -v mosquitto_sub && (command -v mosquitto || test -x /usr/sbin/mosquitto)']).status === 0;
const azuriteBin = path.join(h.E2E_DIR, 'node_modules', '.bin', 'azurite-blob');
const haveAzurite = fs.existsSync(azuriteBin);
const skip = !haveMosquitto ? 'mosquitto and mosquitto-clients are not installed'
  : !haveAzurite ? 'azurite is not installed (npm ci in test/e2e)' : false;
const T = { timeout: 90000, skip };

// Azurite's well-known development account (public, documented by Microsoft).
const AZURITE_ACCOUNT = 'devstoreaccount1';
const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

const addr = process.env.MOAT_E2E_ADDR;
const procs = [];
let work;
let hub; // { addr, dataDir, caPath, ... } from startHub
let hubCli;
let brokerPort;
let blobPort;
let downstream; // mosquitto_sub on the downstream broker

function freePort(host) {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function background(cmd, args, name) {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const s = { proc: p, out: '', name };
  p.stdout.on('data', (d) => { s.out += d; });
  p.stderr.on('data', (d) => { s.out += d; });
  s.exited = new Promise((resolve) => p.on('close', (code, signal) => resolve({ code, signal })));
  procs.push(s);
  return s;
}

async function portOpen(host, port) {
  return new Promise((resolve) => {
    const c = net.connect({ host, port });
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
}

before(async () => {
  if (skip) return;
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-e2e-dataflow-'));

  // The downstream broker (an Event Grid namespace or plant broker stand-in).
  brokerPort = await freePort(addr);
  const conf = path.join(work, 'mosquitto.conf');
  fs.writeFileSync(conf, `listener ${brokerPort} ${addr}\nallow_anonymous true\npersistence false\n`);
  const mosquitto = spawnSync('sh', ['-c', 'command -v mosquitto || echo /usr/sbin/mosquitto']).stdout.toString().trim();
  background(mosquitto, ['-c', conf], 'mosquitto');
  await h.waitFor(() => portOpen(addr, brokerPort), { timeout: 10000, what: 'mosquitto to listen' });

  // Blob storage.
  blobPort = await freePort(addr);
  background(azuriteBin, ['--blobHost', addr, '--blobPort', String(blobPort), '--location', path.join(work, 'azurite'),
    '--skipApiVersionCheck', '--loose', '--silent'], 'azurite');
  await h.waitFor(() => portOpen(addr, blobPort), { timeout: 20000, what: 'azurite to listen' });

  const blobCs = `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=http://${addr}:${blobPort}/${AZURITE_ACCOUNT};`;
  const cfg = {
    properties: {
      routing: {
        endpoints: {
          mqttBridges: [{ name: 'plant-broker', url: `tcp://${addr}:${brokerPort}`, topicTemplate: 'dataflow/{deviceId}/{topic}', qos: 1 }],
          storageContainers: [{
            name: 'lake', connectionString: blobCs, containerName: 'telemetry', encoding: 'JSON', batchFrequencyInSeconds: 2,
          }],
        },
        routes: [
          { name: 'temps-to-broker', source: 'MqttTopics', topicFilter: 'factory/+/temp', endpointNames: ['plant-broker'], isEnabled: true },
          { name: 'factory-to-lake', source: 'MqttTopics', topicFilter: 'factory/#', endpointNames: ['lake'], isEnabled: true },
          { name: 'connections-to-lake', source: 'DeviceConnectionStateEvents', endpointNames: ['lake'], isEnabled: true },
        ],
      },
    },
    // IoT Hub's snapshot is 60 s; a shorter one keeps the test quick.
    moat: { routing: { connectionStateSnapshot: '1s' } },
  };
  const cfgFile = path.join(work, 'moat.json');
  fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));
  const ports = await Promise.all([freePort(addr), freePort(addr), freePort(addr)]);
  hub = await h.startHub({
    addr,
    dataDir: path.join(work, 'data'),
    logFile: path.join(work, 'hub.log'),
    extraArgs: ['--config', cfgFile, '--mqtt-addr', `${addr}:${ports[0]}`, '--https-addr', `${addr}:${ports[1]}`,
      '--mqtt-plain-addr', '', '--metrics-addr', `${addr}:${ports[2]}`],
  });
  hub.mqttPort = ports[0];
  hubCli = (args) => h.run(hub.bin, [...args, '--data-dir', hub.dataDir]);

  // stdbuf: mosquitto_sub buffers its output fully on a pipe otherwise
  downstream = background('stdbuf', ['-oL', 'mosquitto_sub', '-h', addr, '-p', String(brokerPort), '-t', 'dataflow/#', '-v', '-q', '1'], 'mosquitto_sub');
  await h.sleep(300);
});

after(async () => {
  if (hub) await h.stopHub(hub).catch(() => {});
  for (const p of procs.reverse()) {
    if (p.proc.exitCode === null && p.proc.signalCode === null) p.proc.kill('SIGTERM');
    await h.withTimeout(p.exited, 5000, `${p.name} to exit`).catch(() => p.proc.kill('SIGKILL'));
  }
  if (work && process.env.MOAT_E2E_KEEP !== '1') fs.rmSync(work, { recursive: true, force: true });
});

async function newPlc(id) {
  const r = await hubCli(['device', 'create', '-d', id]);
  assert.equal(r.code, 0, `device create: ${r.stderr}`);
  const d = JSON.parse(r.stdout);
  return { id, key: d.authentication.symmetricKey.primaryKey };
}

function pub(d, topic, payload) {
  const token = h.sasToken(`${hub.addr}/devices/${d.id}`, d.key);
  return h.run('mosquitto_pub', ['-h', hub.addr, '-p', String(hub.mqttPort), '--cafile', hub.caPath, '-V', 'mqttv311',
    '-i', d.id, '-u', `${hub.addr}/${d.id}/?api-version=2021-04-12`, '-P', token, '-q', '1', '-t', topic, '-m', payload], { timeout: 20000 });
}

test('mosquitto_pub on factory/line1/temp reaches the bridged broker and blob storage; other topics only where routed', T, async () => {
  const plc = await newPlc(h.uniqueId('plc'));
  let r = await pub(plc, 'factory/line1/temp', '{"temperature":25.5}');
  assert.equal(r.code, 0, `mosquitto_pub: ${r.stdout} ${r.stderr}`);
  r = await pub(plc, 'factory/line1/pressure', '{"bar":2.1}');
  assert.equal(r.code, 0, `mosquitto_pub: ${r.stdout} ${r.stderr}`);

  // The bridge: only the temperature, under the mapped topic.
  await h.waitFor(() => downstream.out.includes(`dataflow/${plc.id}/factory/line1/temp {"temperature":25.5}`),
    { timeout: 15000, what: `the bridged message (downstream saw: ${downstream.out})` });

  // Blob storage: both readings, JSON encoded, in blobs under the hub's name.
  const { BlobServiceClient } = require('@azure/storage-blob');
  const blobCs = `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=http://${addr}:${blobPort}/${AZURITE_ACCOUNT};`;
  const container = BlobServiceClient.fromConnectionString(blobCs).getContainerClient('telemetry');
  let text = '';
  let names = [];
  let lastErr = null;
  let records = [];
  // JSON encoding embeds a body only when it is application/json in UTF-8;
  // mosquitto_pub sends no content type, so the body is base64.
  const bodyOf = (x) => (typeof x.Body === 'string' ? Buffer.from(x.Body, 'base64').toString('utf8') : JSON.stringify(x.Body));
  await h.waitFor(async () => {
    try {
      if (!(await container.exists())) return false;
      names = [];
      text = '';
      for await (const b of container.listBlobsFlat()) {
        names.push(b.name);
        const buf = await container.getBlobClient(b.name).downloadToBuffer();
        text += buf.toString('utf8');
      }
    } catch (err) {
      lastErr = err;
      return false;
    }
    records = text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
    const bodies = records.map(bodyOf);
    return bodies.includes('{"temperature":25.5}') && bodies.includes('{"bar":2.1}');
  }, { timeout: 30000, interval: 500, what: 'both readings in blob storage' }).catch((err) => {
    throw new Error(`${err.message}; blobs ${JSON.stringify(names)}, content ${text.slice(0, 300)}, last error ${lastErr && lastErr.message}`);
  });
  assert.ok(names.length >= 1);
  // {iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}: the hub name is the host
  // name's first label ("127" for this loopback address).
  for (const n of names) assert.match(n, /^127\/0\/\d{4}\/\d{2}\/\d{2}\/\d{2}\/\d{2}/, `blob name ${n}`);
  const temp = records.find((x) => bodyOf(x) === '{"temperature":25.5}');
  assert.ok(temp, 'the temperature record');
  assert.equal(temp.SystemProperties.connectionDeviceId, plc.id);
  assert.equal(temp.SystemProperties['mqtt-topic'], 'factory/line1/temp');

  // Nothing but the temperature was bridged.
  await h.sleep(500);
  assert.ok(!downstream.out.includes('pressure'), `pressure was bridged: ${downstream.out}`);
});

test('routes and endpoints created, changed and deleted with the moat CLI while the hub runs', T, async () => {
  const plc = await newPlc(h.uniqueId('plc'));
  const ok = async (args) => {
    const r = await hubCli(args);
    assert.equal(r.code, 0, `moat ${args.join(' ')}: ${r.stderr}`);
    return r.stdout.trim() ? JSON.parse(r.stdout) : null;
  };
  const bridge = JSON.stringify({ url: `tcp://${addr}:${brokerPort}`, topicTemplate: 'dataflow/live/{deviceId}/{topic}', qos: 1 });
  const ep = await ok(['endpoint', 'create', '--endpoint-name', 'live-broker', '--endpoint-type', 'mqttBridge', '--properties', bridge]);
  assert.deepEqual(ep, { name: 'live-broker', type: 'mqttBridge' });
  const again = await hubCli(['endpoint', 'create', '--endpoint-name', 'live-broker', '--endpoint-type', 'mqttBridge', '--properties', bridge]);
  assert.notEqual(again.code, 0, 'a second create of the same endpoint must fail');
  assert.match(again.stderr, /409|already exists/);

  await ok(['route', 'create', '--name', 'pressure-live', '--source', 'MqttTopics', '--topic-filter', 'factory/+/pressure', '--endpoint-name', 'live-broker']);
  const routes = await ok(['route', 'list']);
  assert.ok(routes.some((r) => r.name === 'pressure-live' && r.topicFilter === 'factory/+/pressure'), JSON.stringify(routes));

  let r = await pub(plc, 'factory/line2/pressure', '{"bar":3.3}');
  assert.equal(r.code, 0, `mosquitto_pub: ${r.stderr}`);
  await h.waitFor(() => downstream.out.includes(`dataflow/live/${plc.id}/factory/line2/pressure {"bar":3.3}`),
    { timeout: 15000, what: `the newly routed message (downstream saw: ${downstream.out})` });

  // In use by a route: refused, with the reason.
  const del = await hubCli(['endpoint', 'delete', '--endpoint-name', 'live-broker']);
  assert.notEqual(del.code, 0);
  assert.match(del.stderr, /route pressure-live/);

  // Disabled: no longer delivered.
  await ok(['route', 'update', '--name', 'pressure-live', '--enabled', 'false']);
  r = await pub(plc, 'factory/line2/pressure', '{"bar":4.4}');
  assert.equal(r.code, 0);
  await ok(['route', 'delete', '--name', 'pressure-live']);
  await ok(['endpoint', 'delete', '--endpoint-name', 'live-broker']);
  const eps = await ok(['endpoint', 'list']);
  assert.ok(!eps.some((e) => e.name === 'live-broker'), JSON.stringify(eps));
  await h.sleep(500);
  assert.ok(!downstream.out.includes('{"bar":4.4}'), `a disabled route delivered: ${downstream.out}`);
});

test('connection state events reach blob storage as IoT Hub snapshots: one per device per period, with its latest state', T, async () => {
  const plc = await newPlc(h.uniqueId('plc'));
  // Three mosquitto_pub runs in well under a second: connect, disconnect,
  // connect, disconnect, connect, disconnect — one snapshot carries only the
  // last state (disconnected).
  const started = Date.now();
  for (let i = 0; i < 3; i++) {
    const r = await pub(plc, 'factory/line9/blip', `{"n":${i}}`);
    assert.equal(r.code, 0, `mosquitto_pub: ${r.stderr}`);
  }
  const took = Date.now() - started;
  const { BlobServiceClient } = require('@azure/storage-blob');
  const blobCs = `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=http://${addr}:${blobPort}/${AZURITE_ACCOUNT};`;
  const container = BlobServiceClient.fromConnectionString(blobCs).getContainerClient('telemetry');
  let events = [];
  await h.waitFor(async () => {
    let text = '';
    for await (const b of container.listBlobsFlat()) {
      text += (await container.getBlobClient(b.name).downloadToBuffer()).toString('utf8');
    }
    events = text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l))
      .filter((x) => x.Properties && x.Properties.deviceId === plc.id && /^device(Connected|Disconnected)$/.test(x.Properties.opType));
    return events.length > 0;
  }, { timeout: 30000, interval: 500, what: 'connection state events in blob storage' });
  await h.sleep(4000); // later snapshots and blob windows: nothing more may come for these changes
  let text = '';
  for await (const b of container.listBlobsFlat()) {
    text += (await container.getBlobClient(b.name).downloadToBuffer()).toString('utf8');
  }
  events = text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l))
    .filter((x) => x.Properties && x.Properties.deviceId === plc.id && /^device(Connected|Disconnected)$/.test(x.Properties.opType));
  const last = events[events.length - 1];
  assert.equal(last.Properties.opType, 'deviceDisconnected', JSON.stringify(events.map((e) => e.Properties.opType)));
  assert.equal(last.Properties['iothub-message-schema'], 'deviceConnectionStateNotification');
  // Six changes, but at most one event per 1 s snapshot period they spanned.
  const periods = Math.ceil(took / 1000) + 1;
  assert.ok(events.length <= Math.min(periods, 5), `${events.length} events for six changes over ${took} ms: ${JSON.stringify(events.map((e) => e.Properties.opType))}`);
});
