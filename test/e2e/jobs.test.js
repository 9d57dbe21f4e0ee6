'use strict';
// Scheduled jobs (azure-iothub JobClient: scheduleTwinUpdate,
// scheduleDeviceMethod, getJob, cancelJob, createQuery) and automatic device
// configurations (Registry add/get/list/update/remove configuration,
// applyConfigurationContentOnDevice) against the hub.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const h = require('./lib/hub');

const hub = h.attachHub();
let reg;
let jobs;
const clients = [];

before(async () => {
  reg = await hub.registry();
  jobs = require('azure-iothub').JobClient.fromConnectionString(await hub.serviceCs());
});

after(async () => { for (const c of clients) await h.closeQuietly(c); });

const T = { timeout: 90000 };

function jobId(prefix) {
  return `${prefix}-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
}

// configuration ids are lower case in IoT Hub
function configId(prefix) {
  return `${prefix}-${process.pid}-${crypto.randomBytes(4).toString('hex')}`.toLowerCase();
}

async function getJob(id) {
  return (await h.withTimeout(jobs.getJob(id), 10000, `getJob ${id}`)).jobStatus;
}

async function waitJob(id, statuses, timeout = 30000) {
  return h.waitFor(async () => {
    const j = await getJob(id);
    return statuses.includes(j.status) ? j : null;
  }, { timeout, interval: 200, what: `job ${id} to reach ${statuses.join('/')}` });
}

async function twinOf(id) {
  return (await reg.getTwin(id)).responseBody;
}

async function queryAll(q, pageSize = 100) {
  const query = reg.createQuery(q, pageSize);
  const out = [];
  for (let i = 0; i < 50; i++) {
    // promise-style next() needs the token passed: next() alone restarts
    const r = await h.withTimeout(query.next(query.continuationToken), 10000, `query page ${i}: ${q}`);
    out.push(...r.result);
    if (!query.hasMoreResults) return out;
  }
  throw new Error(`query did not end after 50 pages: ${q}`);
}

test('scheduleTwinUpdate over deviceId IN [...] completes, with statistics, and changes just those twins', T, async () => {
  const a = await hub.newDevice('jtw');
  const b = await hub.newDevice('jtw');
  const other = await hub.newDevice('jtw');
  const id = jobId('twinjob');
  const patch = { etag: '*', tags: { team: 'blue' }, properties: { desired: { fw: '2.0', knobs: { x: 1 } } } };
  const created = (await jobs.scheduleTwinUpdate(id, `deviceId IN ['${a.id}', '${b.id}']`, patch)).jobStatus;
  assert.equal(created.jobId, id);
  assert.equal(created.type, 'scheduleUpdateTwin');
  assert.ok(['queued', 'scheduled', 'running', 'completed'].includes(created.status), `status ${created.status}`);

  const done = await waitJob(id, ['completed', 'failed', 'cancelled']);
  assert.equal(done.status, 'completed', JSON.stringify(done));
  assert.deepEqual(done.deviceJobStatistics, { deviceCount: 2, failedCount: 0, succeededCount: 2, runningCount: 0, pendingCount: 0 });
  assert.ok(done.endTime && done.endTime.endsWith('Z'), `endTime ${done.endTime}`);

  for (const d of [a, b]) {
    const t = await twinOf(d.id);
    assert.equal(t.tags.team, 'blue');
    assert.equal(t.properties.desired.fw, '2.0');
    assert.deepEqual(t.properties.desired.knobs, { x: 1 });
    assert.equal(t.properties.desired.$version, 2, 'one desired patch');
  }
  const untouched = await twinOf(other.id);
  assert.equal(untouched.properties.desired.fw, undefined);
  assert.equal(untouched.properties.desired.$version, 1);

  // per-device results
  const rows = await queryAll(`SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '${id}'`);
  assert.deepEqual(rows.map((r) => r.deviceId).sort(), [a.id, b.id].sort());
  for (const r of rows) assert.equal(r.status, 'completed');

  // the id is now taken
  const err = await h.expectReject(jobs.scheduleTwinUpdate(id, `deviceId = '${a.id}'`, patch), 'a job with a taken id');
  assert.equal(err.response && err.response.statusCode, 409);
});

test('scheduleDeviceMethod reaches a connected device and fails only the offline one', T, async () => {
  const online = await hub.newDevice('jm');
  const offline = await hub.newDevice('jm');
  const client = await h.openDevice(hub, online.cs);
  clients.push(client);
  const calls = new h.Inbox('method calls');
  client.onDeviceMethod('reboot', (req, res) => {
    calls.push(req.payload);
    res.send(201, { rebooted: true, echo: req.payload }).catch(() => {});
  });
  // the method subscription is live once a direct call succeeds
  const svc = await hub.serviceClient();
  await h.waitFor(async () => (await svc.invokeDeviceMethod(online.id, { methodName: 'reboot', payload: 'ping', responseTimeoutInSeconds: 5 })).result.status === 201,
    { timeout: 15000, interval: 500, what: 'a direct method call to succeed' });

  const id = jobId('methjob');
  const cond = `deviceId IN ['${online.id}', '${offline.id}']`;
  const created = (await jobs.scheduleDeviceMethod(id, cond, { methodName: 'reboot', payload: { delay: 5 }, responseTimeoutInSeconds: 10 })).jobStatus;
  assert.equal(created.type, 'scheduleDeviceMethod');
  assert.equal(created.cloudToDeviceMethod.methodName, 'reboot');

  const done = await waitJob(id, ['completed', 'failed', 'cancelled']);
  assert.equal(done.status, 'completed', JSON.stringify(done));
  assert.equal(done.deviceJobStatistics.deviceCount, 2);
  assert.equal(done.deviceJobStatistics.succeededCount, 1);
  assert.equal(done.deviceJobStatistics.failedCount, 1);
  await calls.waitFor((p) => p && p.delay === 5, 5000, 'the job\'s method call on the device');

  const rows = await queryAll(`SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '${id}'`);
  const byId = Object.fromEntries(rows.map((r) => [r.deviceId, r]));
  assert.equal(byId[online.id].status, 'completed');
  assert.deepEqual(byId[online.id].outcome.deviceMethodResponse, { status: 201, payload: { rebooted: true, echo: { delay: 5 } } });
  assert.equal(byId[offline.id].status, 'failed');
  assert.equal(byId[offline.id].error.code, 'DeviceNotOnline');
});

test('a job with a future startTime is queued, and cancelJob cancels it before it runs', T, async () => {
  const d = await hub.newDevice('jfut');
  const id = jobId('future');
  const start = new Date(Date.now() + 5000);
  const created = (await jobs.scheduleTwinUpdate(id, `deviceId = '${d.id}'`, { etag: '*', properties: { desired: { late: true } } }, start, 600)).jobStatus;
  assert.equal(created.status, 'queued');
  assert.equal(new Date(created.startTime).getTime(), start.getTime());
  assert.equal(created.maxExecutionTimeInSeconds, 600);

  const seen = await getJob(id);
  assert.ok(['queued', 'scheduled'].includes(seen.status), `before the start time: ${seen.status}`);

  const cancelled = (await jobs.cancelJob(id)).jobStatus;
  assert.equal(cancelled.status, 'cancelled');
  assert.equal((await getJob(id)).status, 'cancelled');

  // the start time passes and nothing runs
  await h.sleep(Math.max(0, start.getTime() - Date.now()) + 1500);
  assert.equal((await getJob(id)).status, 'cancelled');
  assert.equal((await twinOf(d.id)).properties.desired.late, undefined);

  const missing = await h.expectReject(jobs.getJob(jobId('nosuchjob')), 'getJob of an unknown job');
  assert.equal(missing.response && missing.response.statusCode, 404);
});

test('createQuery pages jobs by type and status and ends with hasMoreResults false', T, async () => {
  const d = await hub.newDevice('jq');
  const ids = [];
  for (let i = 0; i < 3; i++) {
    const id = jobId(`q${i}`);
    ids.push(id);
    await jobs.scheduleTwinUpdate(id, `deviceId = '${d.id}'`, { etag: '*', tags: { n: i } });
  }
  for (const id of ids) await waitJob(id, ['completed']);

  const q = jobs.createQuery('scheduleUpdateTwin', 'completed', 2);
  const seen = [];
  let pages = 0;
  while (q.hasMoreResults && pages < 50) {
    const r = await h.withTimeout(q.next(q.continuationToken), 10000, 'job query page');
    assert.ok(Array.isArray(r.result), 'a page is an array');
    assert.ok(r.result.length <= 2, `page of ${r.result.length}`);
    for (const j of r.result) {
      assert.equal(j.type, 'scheduleUpdateTwin');
      assert.equal(j.status, 'completed');
      seen.push(j.jobId);
    }
    pages++;
  }
  assert.equal(q.hasMoreResults, false);
  for (const id of ids) assert.ok(seen.includes(id), `${id} listed`);
  assert.ok(pages >= 2, `paged (${pages} pages)`);

  const methodsOnly = jobs.createQuery('scheduleDeviceMethod');
  const r = await methodsOnly.next();
  for (const j of r.result) assert.equal(j.type, 'scheduleDeviceMethod');
  assert.ok(!r.result.some((j) => ids.includes(j.jobId)), 'twin jobs are not listed as method jobs');
});

test('configurations: add, get, list, update with etag, remove', T, async () => {
  const id = configId('cfg');
  const config = {
    id,
    content: { deviceContent: { 'properties.desired.crud': { on: true } } },
    targetCondition: "tags.crud = 'nobody'",
    priority: 3,
    labels: { owner: 'e2e' },
    metrics: { queries: { onCount: "SELECT deviceId FROM devices WHERE properties.reported.on = true" } },
  };
  const added = (await reg.addConfiguration(config)).responseBody;
  assert.equal(added.id, id);
  assert.equal(added.schemaVersion, '1.0');
  assert.equal(added.priority, 3);
  assert.ok(added.etag, 'an etag');
  assert.ok(added.createdTimeUtc.endsWith('Z'));

  const dup = await h.expectReject(reg.addConfiguration({ ...config }), 'adding the same id again');
  assert.equal(h.errorName(dup), 'DeviceAlreadyExistsError');

  const got = (await reg.getConfiguration(id)).responseBody;
  assert.equal(got.targetCondition, config.targetCondition);
  assert.deepEqual(got.labels, { owner: 'e2e' });
  assert.deepEqual(got.content, config.content);
  assert.equal(got.metrics.queries.onCount, config.metrics.queries.onCount);
  assert.equal(got.metrics.results.onCount, 0);
  assert.equal(typeof got.systemMetrics.results.targetedCount, 'number');

  const list = (await reg.getConfigurations()).responseBody;
  assert.ok(Array.isArray(list));
  assert.ok(list.some((c) => c.id === id), 'listed');

  const stale = await h.expectReject(reg.updateConfiguration({ ...got, etag: 'bm90LXRoaXM=', priority: 9 }), 'update with a made-up etag');
  assert.equal(h.errorName(stale), 'InvalidEtagError');
  const updated = (await reg.updateConfiguration({ ...got, priority: 9, labels: { owner: 'e2e', v: '2' } })).responseBody;
  assert.equal(updated.priority, 9);
  assert.notEqual(updated.etag, got.etag);
  assert.equal(updated.createdTimeUtc, got.createdTimeUtc);
  const old = await h.expectReject(reg.updateConfiguration({ ...got, priority: 10 }), 'update with the previous etag');
  assert.equal(h.errorName(old), 'InvalidEtagError');
  const forced = (await reg.updateConfiguration({ ...updated, priority: 11 }, true)).responseBody;
  assert.equal(forced.priority, 11);

  await reg.removeConfiguration(id);
  const gone = await h.expectReject(reg.getConfiguration(id), 'get after remove');
  assert.equal(gone.response && gone.response.statusCode, 404);
});

test("a configuration targeting tags.env='prod' reaches matching twins; the higher priority wins", T, async () => {
  const prod = await hub.newDevice('cprod');
  const dev = await hub.newDevice('cdev');
  const env = `prod-${crypto.randomBytes(3).toString('hex')}`;
  await reg.updateTwin(prod.id, { tags: { env } }, '*');
  await reg.updateTwin(dev.id, { tags: { env: 'dev' } }, '*');

  const low = configId('low');
  const high = configId('high');
  await reg.addConfiguration({
    id: low,
    content: { deviceContent: { 'properties.desired.settings': { mode: 'eco', level: 3 } } },
    targetCondition: `tags.env = '${env}'`,
    priority: 1,
  });
  // the applier runs on change and every 10 s
  const t1 = await h.waitFor(async () => {
    const t = await twinOf(prod.id);
    return t.properties.desired.settings && t.properties.desired.settings.mode === 'eco' ? t : null;
  }, { timeout: 25000, interval: 250, what: 'the configuration in the prod twin' });
  assert.deepEqual(t1.properties.desired.settings, { mode: 'eco', level: 3 });
  assert.equal((await twinOf(dev.id)).properties.desired.settings, undefined);

  // applying is idempotent: no new desired version while nothing changes
  const v = t1.properties.desired.$version;
  await h.waitFor(async () => (await reg.getConfiguration(low)).responseBody.systemMetrics.results.appliedCount === 1,
    { timeout: 25000, interval: 500, what: 'appliedCount 1' });
  assert.equal((await twinOf(prod.id)).properties.desired.$version, v);

  await reg.addConfiguration({
    id: high,
    content: { deviceContent: { 'properties.desired.settings': { mode: 'turbo' } } },
    targetCondition: `tags.env = '${env}'`,
    priority: 5,
  });
  const t2 = await h.waitFor(async () => {
    const t = await twinOf(prod.id);
    return t.properties.desired.settings && t.properties.desired.settings.mode === 'turbo' ? t : null;
  }, { timeout: 25000, interval: 250, what: 'the higher-priority configuration to win' });
  assert.deepEqual(t2.properties.desired.settings, { mode: 'turbo' }, 'the winner replaces the property');
  const lowNow = await h.waitFor(async () => {
    const c = (await reg.getConfiguration(low)).responseBody;
    return c.systemMetrics.results.appliedCount === 0 ? c : null;
  }, { timeout: 25000, interval: 500, what: 'the lower priority to count as not applied' });
  assert.equal(lowNow.systemMetrics.results.targetedCount, 1);

  await reg.removeConfiguration(high);
  await reg.removeConfiguration(low);
});

test('applyConfigurationContentOnDevice patches desired properties at once; modulesContent needs an edge device', T, async () => {
  const d = await hub.newDevice('capply');
  await reg.applyConfigurationContentOnDevice(d.id, { deviceContent: { 'properties.desired.applied': { now: 1 } } });
  const t = await twinOf(d.id);
  assert.deepEqual(t.properties.desired.applied, { now: 1 });

  const bad = await h.expectReject(reg.applyConfigurationContentOnDevice(d.id,
    { modulesContent: { $edgeAgent: { 'properties.desired': { schemaVersion: '1.0' } } } }), 'modulesContent on a plain device');
  assert.equal(bad.response && bad.response.statusCode, 400);

  const missing = await h.expectReject(reg.applyConfigurationContentOnDevice(`nosuch-${process.pid}`,
    { deviceContent: { 'properties.desired.x': 1 } }), 'an unknown device');
  assert.equal(h.errorName(missing), 'DeviceNotFoundError');
});
