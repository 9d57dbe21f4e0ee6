'use strict';
// MQTT over WebSockets (wss://host:443/$iothub/websocket, subprotocol mqtt)
// with the official MqttWs transport.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Message } = require('azure-iot-device');
const { MqttWs } = require('azure-iot-device-mqtt');
const h = require('./lib/hub');

const hub = h.attachHub();
let dev;
let client;
let monitor;

before(async () => {
  dev = await hub.newDevice('ws');
  monitor = await hub.monitor({ device: dev.id });
  client = await h.openDevice(hub, dev.cs, { transport: MqttWs });
});

after(async () => {
  await h.closeQuietly(client);
  if (monitor) await monitor.stop();
});

const T = { timeout: 60000 };

test('telemetry over WebSockets', T, async () => {
  const msg = new Message(JSON.stringify({ over: 'wss' }));
  msg.messageId = h.uniqueId('wsmsg');
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('transport', 'mqtt ws');
  await h.withTimeout(client.sendEvent(msg), 10000, 'sendEvent over wss');
  const ev = await monitor.waitFor((e) => h.sys(e, 'message-id') === msg.messageId, 10000, 'the wss message');
  assert.equal(ev.origin, dev.id);
  assert.deepEqual(ev.payload, { over: 'wss' });
  assert.deepEqual(h.app(ev), { transport: 'mqtt ws' });
});

test('twin over WebSockets: GET, reported, desired', T, async () => {
  const twin = await h.withTimeout(client.getTwin(), 10000, 'getTwin over wss');
  assert.equal(typeof twin.properties.desired.$version, 'number');
  await h.withTimeout(new Promise((resolve, reject) => twin.properties.reported.update({ ws: true },
    (err) => (err ? reject(err) : resolve()))), 10000, 'reported update over wss');
  const reg = await hub.registry();
  const st = (await reg.getTwin(dev.id)).responseBody;
  assert.equal(st.properties.reported.ws, true);

  const desired = await h.watchDesired(twin, 'desired over wss');
  await reg.updateTwin(dev.id, { properties: { desired: { viaWs: 1 } } }, st.etag);
  const p = await desired.waitFor((x) => x.viaWs === 1, 10000, 'desired patch over wss');
  assert.equal(p.$version, st.properties.desired.$version + 1);
});

test('direct method and C2D over WebSockets', T, async () => {
  client.onDeviceMethod('wsecho', (req, res) => res.send(200, req.payload).catch(() => {}));
  const inbox = new h.Inbox('C2D over wss');
  client.on('message', (m) => { inbox.push(m); client.complete(m).catch(() => {}); });
  const svc = await hub.serviceClient();
  const r = await h.waitFor(() => svc.invokeDeviceMethod(dev.id, { methodName: 'wsecho', payload: { x: 'y' }, responseTimeoutInSeconds: 5 }),
    { timeout: 20000, interval: 500, what: 'a method call over wss' });
  assert.equal(r.result.status, 200);
  assert.deepEqual(r.result.payload, { x: 'y' });

  const mid = h.uniqueId('wsc2d');
  await hub.cliOK(['device', 'send-c2d', '-d', dev.id, '--data', 'to ws', '--message-id', mid]);
  const m = await inbox.waitFor((x) => x.messageId === mid, 10000, 'C2D over wss');
  assert.equal(Buffer.from(m.data).toString(), 'to ws');
});

test('a wrong key over WebSockets is UnauthorizedError', T, async () => {
  const bad = dev.cs.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${Buffer.alloc(32, 5).toString('base64')}`);
  const err = await h.expectReject(h.openDevice(hub, bad, { transport: MqttWs }), 'open over wss with a wrong key');
  assert.equal(h.errorName(err), 'UnauthorizedError', String(err));
});
