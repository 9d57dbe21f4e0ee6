'use strict';
// Device twins: the device SDK's getTwin / reported updates / desired
// notifications against the service SDK's getTwin / updateTwin.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/hub');

const hub = h.attachHub();
const clients = [];
after(async () => { for (const c of clients) await h.closeQuietly(c); });

const T = { timeout: 60000 };

async function open(cs) {
  const c = await h.openDevice(hub, cs);
  clients.push(c);
  return c;
}

function updateReported(twin, patch) {
  return h.withTimeout(new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve()));
  }), 10000, 'reported properties update');
}

test('a new twin: versions start at 1, no tags, top-level desired/reported for the device', T, async () => {
  const dev = await hub.newDevice('twin-new');
  const reg = await hub.registry();
  const st = (await reg.getTwin(dev.id)).responseBody;
  assert.equal(st.deviceId, dev.id);
  assert.ok(st.etag, 'service twin has an etag');
  assert.equal(st.properties.desired.$version, 1);
  assert.equal(st.properties.reported.$version, 1);
  assert.deepEqual(st.tags || {}, {});

  const client = await open(dev.cs);
  const twin = await h.withTimeout(client.getTwin(), 10000, 'device getTwin');
  assert.equal(twin.properties.desired.$version, 1);
  assert.equal(twin.properties.reported.$version, 1);
});

test('reported properties reach the service twin with a new version; null deletes', T, async () => {
  const dev = await hub.newDevice('twin-rep');
  const reg = await hub.registry();
  const client = await open(dev.cs);
  const twin = await h.withTimeout(client.getTwin(), 10000, 'device getTwin');
  const v0 = twin.properties.reported.$version;

  await updateReported(twin, { temperature: 21, firmware: { version: '1.2.3', ok: true }, gone: 'soon' });
  let st = (await reg.getTwin(dev.id)).responseBody;
  assert.equal(st.properties.reported.temperature, 21);
  assert.deepEqual(st.properties.reported.firmware, { version: '1.2.3', ok: true });
  assert.equal(st.properties.reported.$version, v0 + 1);
  assert.ok(st.properties.reported.$metadata, 'reported has $metadata');

  await updateReported(twin, { gone: null, firmware: { ok: false } });
  st = (await reg.getTwin(dev.id)).responseBody;
  assert.equal(st.properties.reported.$version, v0 + 2);
  assert.ok(!('gone' in st.properties.reported), 'a null in a reported patch deletes the key');
  assert.deepEqual(st.properties.reported.firmware, { version: '1.2.3', ok: false }, 'patches merge into objects');

  // the device's own GET agrees
  const again = await h.withTimeout(client.getTwin(), 10000, 'second getTwin');
  assert.equal(again.properties.reported.$version, v0 + 2);
});

test('a desired patch from the service reaches the connected device with the next $version', T, async () => {
  const dev = await hub.newDevice('twin-des');
  const reg = await hub.registry();
  const client = await open(dev.cs);
  const twin = await h.withTimeout(client.getTwin(), 10000, 'device getTwin');
  const patches = await h.watchDesired(twin);

  const st = (await reg.getTwin(dev.id)).responseBody;
  const v = st.properties.desired.$version;
  const updated = (await reg.updateTwin(dev.id, { properties: { desired: { color: 'red', limits: { max: 10 } } } }, st.etag)).responseBody;
  assert.equal(updated.properties.desired.color, 'red', 'PATCH answers the new twin');
  assert.equal(updated.properties.desired.$version, v + 1);

  const p = await patches.waitFor((x) => x.color === 'red', 10000, 'the desired patch on the device');
  assert.equal(p.$version, v + 1);
  assert.deepEqual(p.limits, { max: 10 });
  assert.equal(twin.properties.desired.color, 'red', 'the SDK merged the patch');

  // a second patch: exactly one more version, nulls delete
  const st2 = (await reg.getTwin(dev.id)).responseBody;
  await reg.updateTwin(dev.id, { properties: { desired: { color: null, mode: 'eco' } } }, st2.etag);
  const p2 = await patches.waitFor((x) => x.mode === 'eco', 10000, 'the second desired patch');
  assert.equal(p2.$version, v + 2);
  assert.equal(p2.color, null, 'a deleted key is sent as null');
  const st3 = (await reg.getTwin(dev.id)).responseBody;
  assert.ok(!('color' in st3.properties.desired));
  assert.equal(st3.properties.desired.$version, v + 2);
});

test('a desired change made while the device is offline is in its next twin GET', T, async () => {
  const dev = await hub.newDevice('twin-off');
  const reg = await hub.registry();
  const c1 = await open(dev.cs);
  await h.withTimeout(c1.getTwin(), 10000, 'getTwin');
  await c1.close();

  const st = (await reg.getTwin(dev.id)).responseBody;
  await reg.updateTwin(dev.id, { properties: { desired: { offline: 'set' } } }, st.etag);
  const want = st.properties.desired.$version + 1;

  const c2 = await open(dev.cs);
  const twin = await h.withTimeout(c2.getTwin(), 10000, 'getTwin after reconnect');
  assert.equal(twin.properties.desired.offline, 'set');
  assert.equal(twin.properties.desired.$version, want);
});

test('tags are on the service twin only and can be replaced', T, async () => {
  const dev = await hub.newDevice('twin-tags');
  const reg = await hub.registry();
  const st = (await reg.getTwin(dev.id)).responseBody;
  const t1 = (await reg.updateTwin(dev.id, { tags: { site: 'north', floor: 3 } }, st.etag)).responseBody;
  assert.deepEqual(t1.tags, { site: 'north', floor: 3 });
  const t2 = (await reg.updateTwin(dev.id, { tags: { floor: null } }, t1.etag)).responseBody;
  assert.deepEqual(t2.tags, { site: 'north' });
  // the service Twin object does the same through its own update()
  const twinObj = (await reg.getTwin(dev.id)).responseBody;
  const t3 = (await twinObj.update({ tags: { room: 'b' } })).result;
  assert.deepEqual(t3.tags, { site: 'north', room: 'b' });
});
