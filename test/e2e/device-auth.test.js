'use strict';
// Device authentication over MQTT with the official device SDK: good and bad
// keys, disabled devices, and devices disabled or deleted while connected.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Message } = require('azure-iot-device');
const h = require('./lib/hub');

const hub = h.attachHub();
const clients = [];
after(async () => { for (const c of clients) await h.closeQuietly(c); });

const T = { timeout: 60000 };

async function open(cs, opts) {
  const c = await h.openDevice(hub, cs, opts);
  clients.push(c);
  return c;
}

function trackDisconnect(client) {
  const inbox = new h.Inbox('device client "disconnect" event');
  client.on('disconnect', (d) => inbox.push(d || {}));
  return inbox;
}

test('a device made with the CLI connects with the CLI connection string and sends', T, async () => {
  const id = h.uniqueId('cli');
  const created = await hub.createDevice(id);
  assert.equal(created.deviceId, id);
  const cs = await hub.deviceCs(id);
  const parsed = h.parseCs(cs);
  assert.equal(parsed.HostName, hub.host);
  assert.equal(parsed.DeviceId, id);
  assert.ok(parsed.SharedAccessKey, 'connection string has a key');
  const client = await open(cs);
  await h.withTimeout(client.sendEvent(new Message('hello')), 10000, 'sendEvent');
  await client.close();

  const sec = h.parseCs(h.connectionStringFromOutput(
    await hub.cliOK(['device', 'show-connection-string', '-d', id, '--key-type', 'secondary']),
  ));
  assert.notEqual(sec.SharedAccessKey, parsed.SharedAccessKey, 'secondary key differs from primary');
  const c2 = await open(`HostName=${sec.HostName};DeviceId=${id};SharedAccessKey=${sec.SharedAccessKey}`);
  await h.withTimeout(c2.sendEvent(new Message('with secondary key')), 10000, 'sendEvent with secondary key');
  await c2.close();
});

test('a wrong key is UnauthorizedError at once (not retried)', T, async () => {
  const dev = await hub.newDevice('wrongkey');
  const bad = dev.cs.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${Buffer.alloc(32, 9).toString('base64')}`);
  const t0 = Date.now();
  const err = await h.expectReject(open(bad), 'open with a wrong key');
  assert.equal(h.errorName(err), 'UnauthorizedError', String(err));
  assert.ok(Date.now() - t0 < 15000, `refusal took ${Date.now() - t0} ms: the SDK retried, so the hub did not answer CONNACK 4/5`);
});

test('a token for another device is refused', T, async () => {
  const a = await hub.newDevice('tokA');
  const b = await hub.newDevice('tokB');
  // device A's id with device B's key: the signature cannot match A's keys
  const err = await h.expectReject(open(`HostName=${hub.host};DeviceId=${a.id};SharedAccessKey=${b.key}`), 'open with another device key');
  assert.equal(h.errorName(err), 'UnauthorizedError', String(err));
});

test('an unknown device is refused', T, async () => {
  const err = await h.expectReject(
    open(`HostName=${hub.host};DeviceId=${h.uniqueId('ghost')};SharedAccessKey=${Buffer.alloc(32, 3).toString('base64')}`),
    'open for an unregistered device',
  );
  assert.equal(h.errorName(err), 'UnauthorizedError', String(err));
});

test('a disabled device is refused', T, async () => {
  const dev = await hub.newDevice('disabled', { status: 'disabled' });
  const reg = await hub.registry();
  assert.equal((await reg.get(dev.id)).responseBody.status, 'disabled');
  const err = await h.expectReject(open(dev.cs), 'open a disabled device');
  assert.equal(h.errorName(err), 'UnauthorizedError', String(err));

  await reg.update({ deviceId: dev.id, status: 'enabled' });
  const client = await open(dev.cs);
  await h.withTimeout(client.sendEvent(new Message('enabled again')), 10000, 'sendEvent after enabling');
  await client.close();
});

test('a connected device is disconnected when it is disabled, and refused after', T, async () => {
  const dev = await hub.newDevice('disable-live');
  const reg = await hub.registry();
  const client = await open(dev.cs, { noRetry: true });
  const disconnects = trackDisconnect(client);
  await h.withTimeout(client.sendEvent(new Message('before')), 10000, 'sendEvent before disabling');

  await reg.update({ deviceId: dev.id, status: 'disabled' });
  await disconnects.waitFor(() => true, 15000, 'the hub to drop the connection of a disabled device');

  const err = await h.expectReject(open(dev.cs), 'reconnect while disabled');
  assert.equal(h.errorName(err), 'UnauthorizedError', String(err));
});

test('a connected device is disconnected when it is deleted', T, async () => {
  const dev = await hub.newDevice('delete-live');
  const reg = await hub.registry();
  const client = await open(dev.cs, { noRetry: true });
  const disconnects = trackDisconnect(client);
  await reg.delete(dev.id);
  await disconnects.waitFor(() => true, 15000, 'the hub to drop the connection of a deleted device');
});

test('a second connection with the same device id replaces the first', T, async () => {
  const dev = await hub.newDevice('twice');
  const first = await open(dev.cs, { noRetry: true });
  const firstDown = trackDisconnect(first);
  const second = await open(dev.cs, { noRetry: true });
  await firstDown.waitFor(() => true, 15000, 'the first connection to be dropped');
  await h.withTimeout(second.sendEvent(new Message('second')), 10000, 'sendEvent on the second connection');
});

test('connection state is visible in the registry', T, async () => {
  const dev = await hub.newDevice('state');
  const reg = await hub.registry();
  assert.equal((await reg.get(dev.id)).responseBody.connectionState, 'Disconnected');
  const client = await open(dev.cs);
  await h.waitFor(async () => (await reg.get(dev.id)).responseBody.connectionState === 'Connected',
    { timeout: 10000, what: 'connectionState Connected' });
  await client.close();
  await h.waitFor(async () => (await reg.get(dev.id)).responseBody.connectionState === 'Disconnected',
    { timeout: 10000, what: 'connectionState Disconnected' });
});
