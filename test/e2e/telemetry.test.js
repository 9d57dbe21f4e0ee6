'use strict';
// Device-to-cloud telemetry from the official device SDK (MQTT), observed
// through `moat monitor-events`.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Message } = require('azure-iot-device');
const h = require('./lib/hub');

const hub = h.attachHub();
let dev;
let client;
let monitor;

before(async () => {
  dev = await hub.newDevice('tel');
  monitor = await hub.monitor({ device: dev.id });
  client = await h.openDevice(hub, dev.cs);
});

after(async () => {
  await h.closeQuietly(client);
  if (monitor) await monitor.stop();
});

const T = { timeout: 60000 };

test('system and application properties and a JSON body arrive intact', T, async () => {
  const body = { temperature: 21.5, tags: ['a', 'b'], nested: { ok: true } };
  const msg = new Message(JSON.stringify(body));
  msg.messageId = h.uniqueId('mid');
  msg.correlationId = 'corr/1 & 2=3';
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  const props = {
    temperatureAlert: 'true',
    'with space': 'v w',
    'amp&key': 'a&b',
    'eq=key': 'x=y',
    'slash/key': '/p/q/',
    plain: '',
  };
  for (const [k, v] of Object.entries(props)) msg.properties.add(k, v);

  await h.withTimeout(client.sendEvent(msg), 10000, 'sendEvent (PUBACK)');
  const ev = await monitor.waitFor((e) => h.sys(e, 'message-id') === msg.messageId, 10000, `message ${msg.messageId} in monitor-events`);

  assert.equal(ev.origin, dev.id);
  assert.ok(!ev.module, `module is empty for a device message: ${JSON.stringify(ev.module)}`);
  assert.deepEqual(ev.payload, body, 'a JSON body is shown as JSON');
  assert.equal(h.sys(ev, 'correlation-id'), msg.correlationId);
  assert.equal(h.sys(ev, 'content-type'), 'application/json');
  assert.equal(h.sys(ev, 'content-encoding'), 'utf-8');
  assert.equal(h.sys(ev, 'iothub-connection-device-id'), dev.id);
  assert.deepEqual(h.app(ev), props, 'application properties, percent-decoded, exactly as sent');
  assert.equal(monitor.badLines.length, 0, `monitor printed non-JSON lines: ${monitor.badLines.join('\n')}`);
});

// The hub parks a connection quiet for 2 s on its socket under a small stack
// (mochi's idle wait); the SDK's next publish must be read as before.
test('a device quiet for longer than the hub\'s idle wait sends again on the same connection', T, async () => {
  // The SDK reconnects by itself, which would hide a connection the wait
  // broke: the hub's connection state time moves at every connect.
  const reg = await hub.registry();
  const connectedAt = async () => (await reg.get(dev.id)).responseBody.connectionStateUpdatedTime;
  const before = await connectedAt();
  for (let i = 0; i < 2; i++) {
    await h.sleep(3000);
    const msg = new Message(JSON.stringify({ afterIdle: i }));
    msg.messageId = h.uniqueId('idle');
    await h.withTimeout(client.sendEvent(msg), 10000, `sendEvent after idle period ${i}`);
    await monitor.waitFor((e) => h.sys(e, 'message-id') === msg.messageId, 10000, `message after idle period ${i}`);
  }
  assert.equal(String(await connectedAt()), String(before), 'the device connected again while idle');
});

test('a text body without content type arrives as a string', T, async () => {
  const msg = new Message('plain text, not JSON: {');
  msg.messageId = h.uniqueId('mid');
  await h.withTimeout(client.sendEvent(msg), 10000, 'sendEvent');
  const ev = await monitor.waitFor((e) => h.sys(e, 'message-id') === msg.messageId, 10000, 'the text message');
  assert.equal(ev.payload, 'plain text, not JSON: {');
  assert.deepEqual(h.app(ev), {});
});

test('messages keep their order', T, async () => {
  const ids = [];
  for (let i = 0; i < 20; i++) {
    const msg = new Message(JSON.stringify({ i }));
    msg.messageId = h.uniqueId(`seq${i}`);
    msg.contentType = 'application/json';
    msg.contentEncoding = 'utf-8';
    ids.push(msg.messageId);
    await h.withTimeout(client.sendEvent(msg), 10000, `sendEvent ${i}`);
  }
  await monitor.waitFor((e) => h.sys(e, 'message-id') === ids[ids.length - 1], 10000, 'the last of 20 messages');
  const got = monitor.events.items.map((e) => h.sys(e, 'message-id')).filter((m) => ids.includes(m));
  assert.deepEqual(got, ids, 'all 20 messages, once each, in order');
});

test('a 200 KiB message is accepted', T, async () => {
  const big = 'x'.repeat(200 * 1024);
  const msg = new Message(big);
  msg.messageId = h.uniqueId('big');
  await h.withTimeout(client.sendEvent(msg), 15000, 'sendEvent 200 KiB');
  const ev = await monitor.waitFor((e) => h.sys(e, 'message-id') === msg.messageId, 10000, 'the 200 KiB message');
  assert.equal(ev.payload.length, big.length);
});

test('monitor-events -d filters by device', T, async () => {
  const other = await hub.newDevice('tel-other');
  const oc = await h.openDevice(hub, other.cs);
  try {
    const m = new Message('from the other device');
    m.messageId = h.uniqueId('other');
    await h.withTimeout(oc.sendEvent(m), 10000, 'sendEvent from the other device');
    // a message from our device, sent after, proves the monitor is past that point
    const mine = new Message('mine');
    mine.messageId = h.uniqueId('mine');
    await h.withTimeout(client.sendEvent(mine), 10000, 'sendEvent');
    await monitor.waitFor((e) => h.sys(e, 'message-id') === mine.messageId, 10000, 'our message');
    assert.ok(!monitor.events.items.some((e) => h.sys(e, 'message-id') === m.messageId),
      'monitor-events -d shows no message of another device');
    assert.ok(monitor.events.items.every((e) => e.origin === dev.id));
  } finally {
    await h.closeQuietly(oc);
  }
});
