'use strict';
// Module identities with the official ModuleClient (MQTT): telemetry, module
// twin, module direct methods.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Message } = require('azure-iot-device');
const h = require('./lib/hub');

const hub = h.attachHub();
let dev;
let mod;
let mclient;
let monitor;

before(async () => {
  dev = await hub.newDevice('modhost');
  mod = await hub.newModule(dev.id, 'sensor');
  monitor = await hub.monitor({ device: dev.id });
  mclient = await h.openDevice(hub, mod.cs, { module: true });
  mclient.onMethod('hello', (req, res) => res.send(200, { from: 'module', got: req.payload === undefined ? null : req.payload }).catch(() => {}));
});

after(async () => {
  await h.closeQuietly(mclient);
  if (monitor) await monitor.stop();
});

const T = { timeout: 60000 };

test('the CLI shows a module connection string with ModuleId', T, async () => {
  const cs = await hub.deviceCs(dev.id, 'sensor');
  const p = h.parseCs(cs);
  assert.equal(p.DeviceId, dev.id);
  assert.equal(p.ModuleId, 'sensor');
  assert.equal(p.SharedAccessKey, mod.key);
});

test('module telemetry is seen with the module id', T, async () => {
  const msg = new Message(JSON.stringify({ reading: 3 }));
  msg.messageId = h.uniqueId('modmsg');
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('kind', 'module');
  await h.withTimeout(mclient.sendEvent(msg), 10000, 'module sendEvent');
  const ev = await monitor.waitFor((e) => h.sys(e, 'message-id') === msg.messageId, 10000, 'the module message');
  assert.equal(ev.origin, dev.id);
  assert.equal(ev.module, 'sensor');
  assert.equal(h.sys(ev, 'iothub-connection-device-id'), dev.id);
  assert.equal(h.sys(ev, 'iothub-connection-module-id'), 'sensor');
  assert.deepEqual(ev.payload, { reading: 3 });
  assert.deepEqual(h.app(ev), { kind: 'module' });
});

test('module twin: GET, reported update seen by the service, desired patch seen by the module', T, async () => {
  const twin = await h.withTimeout(mclient.getTwin(), 10000, 'module getTwin');
  assert.equal(twin.properties.desired.$version, 1);
  await h.withTimeout(new Promise((resolve, reject) => twin.properties.reported.update({ mode: 'module' },
    (err) => (err ? reject(err) : resolve()))), 10000, 'module reported update');

  const reg = await hub.registry();
  const st = (await reg.getModuleTwin(dev.id, 'sensor')).responseBody;
  assert.equal(st.moduleId, 'sensor');
  assert.equal(st.properties.reported.mode, 'module');
  // the device twin is separate
  const dt = (await reg.getTwin(dev.id)).responseBody;
  assert.ok(!('mode' in dt.properties.reported), 'module reported properties do not leak into the device twin');

  const desired = await h.watchDesired(twin, 'module properties.desired events');
  await reg.updateModuleTwin(dev.id, 'sensor', { properties: { desired: { rate: 5 } } }, st.etag);
  const p = await desired.waitFor((x) => x.rate === 5, 10000, 'the module desired patch');
  assert.equal(p.$version, st.properties.desired.$version + 1);
});

test('module direct method round trip', T, async () => {
  const svc = await hub.serviceClient();
  const r = await h.withTimeout(svc.invokeDeviceMethod(dev.id, 'sensor', { methodName: 'hello', payload: { n: 1 }, responseTimeoutInSeconds: 10 }),
    20000, 'module method');
  assert.equal(r.result.status, 200);
  assert.deepEqual(r.result.payload, { from: 'module', got: { n: 1 } });
  // the device itself is not connected: the same method on the device is offline
  const err = await h.expectReject(svc.invokeDeviceMethod(dev.id, { methodName: 'hello', payload: null, responseTimeoutInSeconds: 5 }),
    'method on the (offline) parent device');
  assert.equal(err.response && err.response.statusCode, 404, String(err));
});

test('a module key does not open the device, and the device key does not open the module', T, async () => {
  const asDevice = `HostName=${hub.host};DeviceId=${dev.id};SharedAccessKey=${mod.key}`;
  const e1 = await h.expectReject(h.openDevice(hub, asDevice), 'device with the module key');
  assert.equal(h.errorName(e1), 'UnauthorizedError', String(e1));
  const asModule = `HostName=${hub.host};DeviceId=${dev.id};ModuleId=sensor;SharedAccessKey=${dev.key}`;
  const e2 = await h.expectReject(h.openDevice(hub, asModule, { module: true }), 'module with the device key');
  assert.equal(h.errorName(e2), 'UnauthorizedError', String(e2));
});
