'use strict';
// Identity registry through the official service SDK (azure-iothub Registry, REST).

const { test, before } = require('node:test');
const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const h = require('./lib/hub');

const hub = h.attachHub();
let registry;

before(async () => {
  registry = Registry.fromConnectionString(await hub.serviceCs());
});

const T = { timeout: 60000 };

test('create, get, list, update, delete a device', T, async () => {
  const id = h.uniqueId('reg');
  const created = (await registry.create({ deviceId: id })).responseBody;
  assert.equal(created.deviceId, id);
  assert.equal(created.status, 'enabled');
  const keys = created.authentication && created.authentication.symmetricKey;
  assert.ok(keys && keys.primaryKey && keys.secondaryKey, 'the hub generates both keys when the SDK sends empty ones');
  assert.notEqual(keys.primaryKey, keys.secondaryKey);
  assert.equal(Buffer.from(keys.primaryKey, 'base64').length >= 16, true, 'primary key is base64 of at least 16 bytes');
  assert.ok(created.etag, 'device has an etag');

  const got = (await registry.get(id)).responseBody;
  assert.equal(got.deviceId, id);
  assert.equal(got.authentication.symmetricKey.primaryKey, keys.primaryKey);
  assert.equal(got.status, 'enabled');

  const list = (await registry.list()).responseBody;
  assert.ok(Array.isArray(list), 'list returns an array');
  assert.ok(list.some((d) => d.deviceId === id), 'list contains the new device');

  const updated = (await registry.update({ deviceId: id, status: 'disabled', statusReason: 'e2e' })).responseBody;
  assert.equal(updated.status, 'disabled');
  const afterUpdate = (await registry.get(id)).responseBody;
  assert.equal(afterUpdate.status, 'disabled');
  assert.equal(afterUpdate.statusReason, 'e2e');
  assert.equal(afterUpdate.authentication.symmetricKey.primaryKey, keys.primaryKey, 'a partial update keeps the keys');
  assert.equal(afterUpdate.authentication.symmetricKey.secondaryKey, keys.secondaryKey);

  await registry.delete(id);
  const err = await h.expectReject(registry.get(id), 'get after delete');
  assert.equal(h.errorName(err), 'DeviceNotFoundError', String(err));
  const list2 = (await registry.list()).responseBody;
  assert.ok(!list2.some((d) => d.deviceId === id), 'deleted device is not listed');

  // a deleted id can be created again at once
  const again = (await registry.create({ deviceId: id })).responseBody;
  assert.equal(again.deviceId, id);
  assert.notEqual(again.authentication.symmetricKey.primaryKey, keys.primaryKey, 'a re-created device gets new keys');
  await registry.delete(id);
});

test('create with explicit keys keeps them', T, async () => {
  const id = h.uniqueId('regkeys');
  const primaryKey = Buffer.alloc(32, 1).toString('base64');
  const secondaryKey = Buffer.alloc(32, 2).toString('base64');
  const created = (await registry.create({
    deviceId: id,
    authentication: { symmetricKey: { primaryKey, secondaryKey } },
  })).responseBody;
  assert.equal(created.authentication.symmetricKey.primaryKey, primaryKey);
  assert.equal(created.authentication.symmetricKey.secondaryKey, secondaryKey);
  await registry.delete(id);
});

test('duplicate create is DeviceAlreadyExistsError', T, async () => {
  const id = h.uniqueId('dup');
  await registry.create({ deviceId: id });
  const err = await h.expectReject(registry.create({ deviceId: id }), 'second create');
  assert.equal(h.errorName(err), 'DeviceAlreadyExistsError', String(err));
  assert.equal(err.response && err.response.statusCode, 409);
  await registry.delete(id);
});

test('get and delete of a missing device are DeviceNotFoundError', T, async () => {
  const id = h.uniqueId('missing');
  const err = await h.expectReject(registry.get(id), 'get missing');
  assert.equal(h.errorName(err), 'DeviceNotFoundError', String(err));
  assert.equal(err.response && err.response.statusCode, 404);
  const err2 = await h.expectReject(registry.delete(id), 'delete missing');
  assert.equal(h.errorName(err2), 'DeviceNotFoundError', String(err2));
});

test('an invalid device id is ArgumentError', T, async () => {
  const err = await h.expectReject(registry.create({ deviceId: 'bad id with spaces' }), 'create with bad id');
  assert.equal(h.errorName(err), 'ArgumentError', String(err));
});

test('a service connection string with a wrong key is UnauthorizedError', T, async () => {
  const cs = await hub.serviceCs();
  const wrongKey = Buffer.alloc(32, 7).toString('base64');
  const bad = cs.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${wrongKey}`);
  assert.notEqual(bad, cs);
  const badRegistry = Registry.fromConnectionString(bad);
  const err = await h.expectReject(badRegistry.list(), 'list with a wrong key');
  assert.equal(h.errorName(err), 'UnauthorizedError', String(err));
  assert.equal(err.response && err.response.statusCode, 401);
});

test('a stale twin etag is InvalidEtagError; the current one and * are accepted', T, async () => {
  const id = h.uniqueId('etag');
  await registry.create({ deviceId: id });
  const twin = (await registry.getTwin(id)).responseBody;
  assert.ok(twin.etag, 'twin has an etag');
  const err = await h.expectReject(
    registry.updateTwin(id, { tags: { a: 1 } }, 'bm90LWEtcmVhbC1ldGFn'),
    'updateTwin with a made-up etag',
  );
  assert.equal(h.errorName(err), 'InvalidEtagError', String(err));
  const ok = (await registry.updateTwin(id, { tags: { a: 2 } }, twin.etag)).responseBody;
  assert.equal(ok.tags.a, 2);
  assert.notEqual(ok.etag, twin.etag, 'the etag changes with the twin');
  const stale = await h.expectReject(registry.updateTwin(id, { tags: { a: 3 } }, twin.etag), 'updateTwin with the old etag');
  assert.equal(h.errorName(stale), 'InvalidEtagError', String(stale));
  const star = (await registry.updateTwin(id, { tags: { a: 4 } }, '*')).responseBody;
  assert.equal(star.tags.a, 4);
  await registry.delete(id);
});

test('bulk addDevices and removeDevices', T, async () => {
  const ids = [h.uniqueId('bulk'), h.uniqueId('bulk'), h.uniqueId('bulk')];
  const added = (await registry.addDevices(ids.map((deviceId) => ({ deviceId })))).responseBody;
  assert.equal(added.isSuccessful, true, JSON.stringify(added));
  assert.deepEqual(added.errors || [], []);
  for (const id of ids) {
    const d = (await registry.get(id)).responseBody;
    assert.equal(d.deviceId, id);
    assert.ok(d.authentication.symmetricKey.primaryKey, 'bulk-created device has generated keys');
  }

  // adding one that exists reports it per device
  const again = (await registry.addDevices([{ deviceId: ids[0] }])).responseBody;
  assert.equal(again.isSuccessful, false, JSON.stringify(again));
  assert.ok(again.errors.some((e) => e.deviceId === ids[0]), JSON.stringify(again));

  const removed = (await registry.removeDevices(ids.map((deviceId) => ({ deviceId })), true)).responseBody;
  assert.equal(removed.isSuccessful, true, JSON.stringify(removed));
  for (const id of ids) {
    const err = await h.expectReject(registry.get(id), `get ${id} after bulk remove`);
    assert.equal(h.errorName(err), 'DeviceNotFoundError', String(err));
  }
});

test('modules: create, get, list, delete', T, async () => {
  const id = h.uniqueId('modhost');
  await registry.create({ deviceId: id });
  const m1 = (await registry.addModule({ deviceId: id, moduleId: 'm1' })).responseBody;
  assert.equal(m1.deviceId, id);
  assert.equal(m1.moduleId, 'm1');
  assert.ok(m1.authentication.symmetricKey.primaryKey, 'module gets generated keys');
  await registry.addModule({ deviceId: id, moduleId: 'm2' });

  const got = (await registry.getModule(id, 'm1')).responseBody;
  assert.equal(got.moduleId, 'm1');
  assert.equal(got.authentication.symmetricKey.primaryKey, m1.authentication.symmetricKey.primaryKey);

  const list = (await registry.getModulesOnDevice(id)).responseBody;
  assert.deepEqual(list.map((m) => m.moduleId).sort(), ['m1', 'm2']);

  const dup = await h.expectReject(registry.addModule({ deviceId: id, moduleId: 'm1' }), 'duplicate module');
  assert.equal(dup.response && dup.response.statusCode, 409, String(dup));

  await registry.removeModule(id, 'm1');
  const err = await h.expectReject(registry.getModule(id, 'm1'), 'get deleted module');
  assert.equal(err.response && err.response.statusCode, 404, String(err));
  const list2 = (await registry.getModulesOnDevice(id)).responseBody;
  assert.deepEqual(list2.map((m) => m.moduleId), ['m2']);

  const modTwin = (await registry.getModuleTwin(id, 'm2')).responseBody;
  assert.equal(modTwin.deviceId, id);
  assert.equal(modTwin.moduleId, 'm2');
  await registry.delete(id);
});

test('registry statistics count enabled and disabled devices', T, async () => {
  const before = (await registry.getRegistryStatistics()).responseBody;
  for (const k of ['totalDeviceCount', 'enabledDeviceCount', 'disabledDeviceCount']) {
    assert.equal(typeof before[k], 'number', `${k} is a number: ${JSON.stringify(before)}`);
  }
  assert.equal(before.enabledDeviceCount + before.disabledDeviceCount, before.totalDeviceCount);
  const a = h.uniqueId('stat');
  const b = h.uniqueId('stat');
  await registry.create({ deviceId: a });
  await registry.create({ deviceId: b, status: 'disabled' });
  const after = (await registry.getRegistryStatistics()).responseBody;
  assert.equal(after.totalDeviceCount, before.totalDeviceCount + 2);
  assert.equal(after.enabledDeviceCount, before.enabledDeviceCount + 1);
  assert.equal(after.disabledDeviceCount, before.disabledDeviceCount + 1);
  await registry.delete(a);
  await registry.delete(b);
});

test('query pages with a continuation and filters on tags', T, async () => {
  const group = `g${Date.now()}`;
  const tagged = [];
  for (let i = 0; i < 5; i++) {
    const id = h.uniqueId('q');
    tagged.push(id);
    await registry.create({ deviceId: id });
    const twin = (await registry.getTwin(id)).responseBody;
    await registry.updateTwin(id, { tags: { e2egroup: group, n: i } }, twin.etag);
  }
  const untagged = h.uniqueId('q');
  await registry.create({ deviceId: untagged });

  const all = (await registry.list()).responseBody.map((d) => d.deviceId).sort();

  // SELECT * FROM devices, two per page, until hasMoreResults is false
  const query = registry.createQuery('SELECT * FROM devices', 2);
  const seen = [];
  let pages = 0;
  while (query.hasMoreResults) {
    const page = (await h.withTimeout(query.nextAsTwin(), 10000, 'a query page')).result;
    pages += 1;
    assert.ok(Array.isArray(page), 'a page is an array of twins');
    assert.ok(page.length <= 2, `page size ${page.length} is at most 2`);
    for (const t of page) seen.push(t.deviceId);
    assert.ok(pages <= all.length + 1, 'the query ends (no continuation on the last page)');
  }
  assert.deepEqual([...seen].sort(), all, 'paging returns every device exactly once');
  assert.ok(pages >= Math.ceil(all.length / 2), `${pages} pages for ${all.length} devices`);

  const q2 = registry.createQuery(`SELECT * FROM devices WHERE tags.e2egroup = '${group}'`, 100);
  const r2 = (await q2.nextAsTwin()).result;
  assert.deepEqual(r2.map((t) => t.deviceId).sort(), [...tagged].sort());
  assert.equal(q2.hasMoreResults, false);
  for (const t of r2) assert.equal(t.tags.e2egroup, group);

  const q3 = registry.createQuery(`SELECT * FROM devices WHERE tags.e2egroup = '${group}' AND tags.n >= 3`);
  const r3 = (await q3.nextAsTwin()).result;
  assert.deepEqual(r3.map((t) => t.tags.n).sort(), [3, 4]);

  for (const id of [...tagged, untagged]) await registry.delete(id);
});
