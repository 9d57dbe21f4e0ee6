'use strict';
// Direct methods: azure-iothub Client.invokeDeviceMethod (REST) to a device
// that answers through the official device SDK (MQTT).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/hub');

const hub = h.attachHub();
let svc;
let dev;
let client;
const clients = [];

before(async () => {
  svc = await hub.serviceClient();
  dev = await hub.newDevice('meth');
  client = await h.openDevice(hub, dev.cs);
  clients.push(client);
  client.onDeviceMethod('echo', (req, res) => {
    const p = req.payload === undefined ? null : req.payload;
    const status = p && typeof p === 'object' && typeof p.status === 'number' ? p.status : 200;
    res.send(status, p).catch(() => {});
  });
  client.onDeviceMethod('hang', () => { /* never answers */ });
  client.onDeviceMethod('slow', (req, res) => {
    setTimeout(() => res.send(200, { waited: req.payload.ms }).catch(() => {}), req.payload.ms);
  });
  // let the method subscription settle: one successful call proves it
  await h.waitFor(async () => {
    const r = await svc.invokeDeviceMethod(dev.id, { methodName: 'echo', payload: 'ping', responseTimeoutInSeconds: 5 });
    return r.result.status === 200;
  }, { timeout: 15000, interval: 500, what: 'the first method call to succeed' });
});

after(async () => { for (const c of clients) await h.closeQuietly(c); });

const T = { timeout: 60000 };

function invoke(deviceId, params, moduleId) {
  const p = moduleId
    ? svc.invokeDeviceMethod(deviceId, moduleId, params)
    : svc.invokeDeviceMethod(deviceId, params);
  return h.withTimeout(p, ((params.responseTimeoutInSeconds || 30) + (params.connectTimeoutInSeconds || 0) + 10) * 1000,
    `invokeDeviceMethod ${params.methodName}`);
}

test('payloads pass through exactly: object, string, null, number, array, empty values', T, async () => {
  const cases = [
    { nested: { a: [1, 2, { b: 'c' }], u: 'ünïcödé ✓' }, flag: false },
    'just a string',
    null,
    42.5,
    [1, 'two', null],
    {},
    '',
  ];
  for (const payload of cases) {
    const r = await invoke(dev.id, { methodName: 'echo', payload, responseTimeoutInSeconds: 10 });
    assert.equal(r.result.status, 200, `status for ${JSON.stringify(payload)}`);
    assert.deepEqual(r.result.payload, payload, `payload ${JSON.stringify(payload)} round trip`);
  }
});

test("the device's status code comes back unchanged, also for errors", T, async () => {
  for (const status of [201, 404, 500]) {
    const payload = { status, why: `status ${status}` };
    const r = await invoke(dev.id, { methodName: 'echo', payload, responseTimeoutInSeconds: 10 });
    assert.equal(r.result.status, status);
    assert.deepEqual(r.result.payload, payload);
  }
});

test('concurrent calls each get their own answer', T, async () => {
  const n = 8;
  const results = await Promise.all(Array.from({ length: n }, (_, i) =>
    invoke(dev.id, { methodName: 'slow', payload: { ms: 50 * (n - i) }, responseTimeoutInSeconds: 10 })));
  results.forEach((r, i) => {
    assert.equal(r.result.status, 200);
    assert.deepEqual(r.result.payload, { waited: 50 * (n - i) }, `call ${i} got its own response`);
  });
});

test('a device that never answers times out with GatewayTimeoutError (504) after responseTimeoutInSeconds', T, async () => {
  const t0 = Date.now();
  const err = await h.expectReject(invoke(dev.id, { methodName: 'hang', payload: {}, responseTimeoutInSeconds: 5 }), 'hanging method');
  const took = Date.now() - t0;
  assert.equal(h.errorName(err), 'GatewayTimeoutError', `${err} (status ${err.response && err.response.statusCode})`);
  assert.equal(err.response.statusCode, 504);
  assert.ok(took >= 4500, `timed out after ${took} ms, before the 5 s response timeout`);
  assert.ok(took < 15000, `timed out after ${took} ms, long after the 5 s response timeout`);
  // the device is still reachable afterwards
  const r = await invoke(dev.id, { methodName: 'echo', payload: 'after', responseTimeoutInSeconds: 5 });
  assert.equal(r.result.payload, 'after');
});

test('a registered but offline device is 404 DeviceNotOnline (404103)', T, async () => {
  const off = await hub.newDevice('meth-off');
  const t0 = Date.now();
  const err = await h.expectReject(invoke(off.id, { methodName: 'echo', payload: 1, responseTimeoutInSeconds: 5 }), 'method on an offline device');
  // azure-iothub maps 404 with a code other than DeviceNotFound to a plain Error('Not found')
  assert.equal(err.response && err.response.statusCode, 404, String(err));
  assert.match(String(err.responseBody), /404103|DeviceNotOnline/, `error body: ${err.responseBody}`);
  assert.notEqual(h.errorName(err), 'DeviceNotFoundError', 'offline is not "not found"');
  assert.ok(Date.now() - t0 < 4000, 'with connectTimeoutInSeconds 0 the hub answers at once');
});

test('an unknown device is DeviceNotFoundError', T, async () => {
  const err = await h.expectReject(invoke(h.uniqueId('nodev'), { methodName: 'echo', payload: 1, responseTimeoutInSeconds: 5 }), 'method on an unknown device');
  assert.equal(h.errorName(err), 'DeviceNotFoundError', String(err));
});

test('connectTimeoutInSeconds waits for the device to connect', T, async () => {
  const late = await hub.newDevice('meth-late');
  const call = invoke(late.id, { methodName: 'echo', payload: { late: true }, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 15 });
  const lateClient = await h.openDevice(hub, late.cs);
  clients.push(lateClient);
  lateClient.onDeviceMethod('echo', (req, res) => res.send(200, req.payload).catch(() => {}));
  const r = await call;
  assert.equal(r.result.status, 200);
  assert.deepEqual(r.result.payload, { late: true });
});

test('the moat CLI invokes a method too', T, async () => {
  const out = await hub.cliJSON(['device', 'invoke-method', '-d', dev.id, '--method-name', 'echo',
    '--method-payload', '{"cli":[1,2]}', '--timeout', '10']);
  assert.deepEqual(out, { status: 200, payload: { cli: [1, 2] } });
});
