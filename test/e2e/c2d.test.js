'use strict';
// Cloud-to-device messages sent with `moat device send-c2d`, received by the
// official device SDK over MQTT: properties, offline queueing, redelivery, expiry.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/hub');

const hub = h.attachHub();
const clients = [];
after(async () => { for (const c of clients) await h.closeQuietly(c); });

const T = { timeout: 60000 };

// openReceiver opens a device client and collects its C2D messages.
async function openReceiver(cs) {
  const client = await h.openDevice(hub, cs);
  clients.push(client);
  const inbox = new h.Inbox('C2D messages on the device');
  client.on('message', (msg) => {
    inbox.push(msg);
    client.complete(msg).catch(() => {});
  });
  return { client, inbox };
}

function sendC2D(id, args) {
  return hub.cliOK(['device', 'send-c2d', '-d', id, ...args]);
}

function text(msg) {
  return Buffer.from(msg.data).toString('utf8');
}

// subscribed proves the device's C2D subscription is live: a marker message sent
// now must arrive.
async function marker(dev, inbox) {
  const mid = h.uniqueId('marker');
  await sendC2D(dev.id, ['--data', 'marker', '--message-id', mid]);
  return inbox.waitFor((m) => m.messageId === mid, 10000, `marker ${mid}`);
}

test('data, message id, correlation id, content type and properties reach the device', T, async () => {
  const dev = await hub.newDevice('c2d');
  // the SDK subscribes to C2D after open(); the hub queues until it does
  const { inbox } = await openReceiver(dev.cs);
  const mid = h.uniqueId('mid');
  await sendC2D(dev.id, [
    '--data', '{"cmd":"reboot","in":5}',
    '--message-id', mid,
    '--correlation-id', 'corr-42',
    '--content-type', 'application/json',
    '--content-encoding', 'utf-8',
    '--props', 'color=red;with space=a b;path=/x/y/;amp=a&b',
  ]);
  const msg = await inbox.waitFor((m) => m.messageId === mid, 10000, `C2D ${mid}`);
  assert.equal(text(msg), '{"cmd":"reboot","in":5}');
  assert.equal(msg.correlationId, 'corr-42');
  assert.equal(msg.contentType, 'application/json');
  assert.equal(msg.contentEncoding, 'utf-8');
  const props = Object.fromEntries(msg.properties.propertyList.map((p) => [p.key, p.value]));
  assert.equal(props.color, 'red');
  assert.equal(props['with space'], 'a b');
  assert.equal(props.path, '/x/y/', "a '/' in a value survives (it must be percent-encoded in the topic)");
  assert.equal(props.amp, 'a&b');
});

test('messages sent while the device is offline are delivered, in order, when it connects', T, async () => {
  const dev = await hub.newDevice('c2d-off');
  const mids = [h.uniqueId('off1'), h.uniqueId('off2'), h.uniqueId('off3')];
  for (const [i, mid] of mids.entries()) {
    await sendC2D(dev.id, ['--data', `queued ${i}`, '--message-id', mid, '--props', `n=${i}`]);
  }
  const { inbox } = await openReceiver(dev.cs);
  await inbox.waitFor((m) => m.messageId === mids[2], 15000, 'the third queued message');
  const got = inbox.items.map((m) => m.messageId).filter((m) => mids.includes(m));
  assert.deepEqual(got, mids, 'each queued message once, in order');
  assert.equal(text(inbox.items.find((m) => m.messageId === mids[1])), 'queued 1');
});

test('a device that disconnects gets what was sent meanwhile after it reconnects, and no completed message again', T, async () => {
  const dev = await hub.newDevice('c2d-re');
  const first = await openReceiver(dev.cs);
  const m1 = h.uniqueId('online');
  await sendC2D(dev.id, ['--data', 'first', '--message-id', m1]);
  await first.inbox.waitFor((m) => m.messageId === m1, 10000, 'the message sent while online');
  // mqtt.js sends the PUBACK before it hands the message to the SDK, so the
  // DISCONNECT of close() follows the PUBACK on the same stream
  await first.client.close();

  const m2 = h.uniqueId('while-offline');
  await sendC2D(dev.id, ['--data', 'second', '--message-id', m2]);

  const second = await openReceiver(dev.cs);
  const got = await second.inbox.waitFor((m) => m.messageId === m2, 15000, 'the message sent while offline');
  assert.equal(text(got), 'second');
  await marker(dev, second.inbox);
  const redelivered = second.inbox.items.filter((m) => m.messageId === m1);
  assert.deepEqual(redelivered.map((m) => m.messageId), [], 'a message the device acknowledged is not delivered again');
});

test('an expired message is not delivered', T, async () => {
  const dev = await hub.newDevice('c2d-exp');
  const expiry = new Date(Date.now() + 2000).toISOString();
  const gone = h.uniqueId('expiring');
  await sendC2D(dev.id, ['--data', 'too late', '--message-id', gone, '--expiry', expiry]);
  await h.sleep(3000); // let the expiry pass: the point of this test is the clock
  const { inbox } = await openReceiver(dev.cs);
  await marker(dev, inbox);
  assert.ok(!inbox.items.some((m) => m.messageId === gone), 'the expired message was delivered');
});

test('purge-c2d drops queued messages', T, async () => {
  const dev = await hub.newDevice('c2d-purge');
  const a = h.uniqueId('purged');
  await sendC2D(dev.id, ['--data', 'x', '--message-id', a]);
  await sendC2D(dev.id, ['--data', 'y', '--message-id', `${a}-2`]);
  await hub.cliOK(['device', 'purge-c2d', '-d', dev.id]);
  const { inbox } = await openReceiver(dev.cs);
  await marker(dev, inbox);
  assert.deepEqual(inbox.items.filter((m) => m.messageId.startsWith(a)).map((m) => m.messageId), []);
});

test('send-c2d to an unknown device fails with DeviceNotFound', T, async () => {
  const r = await hub.cli(['device', 'send-c2d', '-d', h.uniqueId('nodev'), '--data', 'x']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^moat: DeviceNotFound/m);
});
