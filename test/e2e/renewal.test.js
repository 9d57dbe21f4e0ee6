'use strict';
// SAS token renewal. The device SDK renews by DISCONNECT + CONNECT with the new
// token (clean session false) and does NOT subscribe again, so methods, desired
// patches and C2D keep working only if the hub kept the session's subscriptions.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client, Message, SharedAccessKeyAuthenticationProvider } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const h = require('./lib/hub');

const hub = h.attachHub();
let dev;
let client;
let provider;
const renewals = new h.Inbox('newTokenAvailable (token renewals)');
let desired;
const c2d = new h.Inbox('C2D messages');

before(async () => {
  dev = await hub.newDevice('renew');
  // own the authentication provider so the test can see each renewal
  provider = SharedAccessKeyAuthenticationProvider.fromConnectionString(dev.cs);
  provider.on('newTokenAvailable', (creds) => renewals.push({ at: Date.now(), token: creds.sharedAccessSignature }));
  client = Client.fromAuthenticationProvider(provider, Mqtt);
  // valid 20 s, renewed 15 s before expiry: a new token (and a reconnect) every 5 s
  await h.openClient(hub, client, { options: { tokenRenewal: { tokenValidTimeInSeconds: 20, tokenRenewalMarginInSeconds: 15 } } });
  client.onDeviceMethod('ping', (req, res) => res.send(200, { pong: req.payload }).catch(() => {}));
  client.on('message', (m) => { c2d.push(m); client.complete(m).catch(() => {}); });
  const twin = await h.withTimeout(client.getTwin(), 10000, 'getTwin');
  desired = await h.watchDesired(twin);
});

after(async () => { await h.closeQuietly(client); });

const T = { timeout: 90000 };

// afterRenewal waits for the next renewal and a moment for the SDK's reconnect.
async function afterRenewal(n) {
  const have = renewals.items.length;
  await renewals.waitFor(() => renewals.items.length > have, 15000, `renewal #${have + 1}`);
  await h.sleep(n || 1000);
}

test('the SDK renews its token every few seconds and the hub accepts each new token', T, async () => {
  await afterRenewal();
  await afterRenewal();
  assert.ok(renewals.items.length >= 2);
  const tokens = new Set(renewals.items.map((r) => r.token));
  assert.equal(tokens.size, renewals.items.length, 'each renewal made a new token');
  // each renewal is a DISCONNECT + CONNECT with the new token: the hub log shows the connects
  const connects = hub.log().split('\n').filter((l) => l.includes('device connected') && l.includes(dev.id));
  assert.ok(connects.length >= 3, `hub logged ${connects.length} connects of ${dev.id}, want the first + one per renewal`);
  const msg = new Message('after renewals');
  await h.withTimeout(client.sendEvent(msg), 10000, 'sendEvent after renewals');
});

test('direct methods still reach the device after renewals (subscription kept across reconnects)', T, async () => {
  await afterRenewal();
  const svc = await hub.serviceClient();
  const r = await h.withTimeout(svc.invokeDeviceMethod(dev.id, { methodName: 'ping', payload: 7, responseTimeoutInSeconds: 5 }), 15000, 'method call');
  assert.equal(r.result.status, 200);
  assert.deepEqual(r.result.payload, { pong: 7 });
});

test('desired patches still reach the device after renewals', T, async () => {
  await afterRenewal();
  const reg = await hub.registry();
  const st = (await reg.getTwin(dev.id)).responseBody;
  const stamp = `s${Date.now()}`;
  await reg.updateTwin(dev.id, { properties: { desired: { stamp } } }, st.etag);
  const p = await desired.waitFor((x) => x.stamp === stamp, 10000, 'the desired patch after renewal');
  assert.equal(p.$version, st.properties.desired.$version + 1);
});

test('C2D still reaches the device after renewals', T, async () => {
  await afterRenewal();
  const mid = h.uniqueId('renew-c2d');
  await hub.cliOK(['device', 'send-c2d', '-d', dev.id, '--data', 'still here', '--message-id', mid]);
  const m = await c2d.waitFor((x) => x.messageId === mid, 10000, 'C2D after renewal');
  assert.equal(Buffer.from(m.data).toString(), 'still here');
});

test('twin GET and reported updates still work after renewals', T, async () => {
  await afterRenewal();
  const twin = await h.withTimeout(client.getTwin(), 10000, 'getTwin after renewal');
  await h.withTimeout(new Promise((resolve, reject) => twin.properties.reported.update({ renewed: renewals.items.length },
    (err) => (err ? reject(err) : resolve()))), 10000, 'reported update after renewal');
  const reg = await hub.registry();
  const st = (await reg.getTwin(dev.id)).responseBody;
  assert.equal(typeof st.properties.reported.renewed, 'number');
  assert.ok(renewals.items.length >= 5, `${renewals.items.length} renewals during the suite`);
});
