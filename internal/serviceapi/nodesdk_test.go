package serviceapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestNodeSDK drives the server with the official azure-iothub package. It
// needs node, the SDK (MOAT_NODE_MODULES=…/test/e2e/node_modules) and port
// 443 (the SDK has no port option), so it only runs when asked:
//
//	MOAT_NODE_MODULES=$PWD/test/e2e/node_modules go test -run NodeSDK ./internal/serviceapi
func TestNodeSDK(t *testing.T) {
	modules := os.Getenv("MOAT_NODE_MODULES")
	if modules == "" {
		t.Skip("set MOAT_NODE_MODULES to the directory holding azure-iothub to run")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	const ip = "127.0.0.77"
	ln, err := net.Listen("tcp", ip+":443")
	if err != nil {
		t.Skipf("cannot listen on %s:443: %v", ip, err)
	}
	f := newFullHub(t)
	f.srv.cfg.HostName = ip

	caPEM, cert := testCertificate(t, ip)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: f.srv, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = hs.Close() })

	f.tr.mu.Lock()
	f.tr.online["nd1/"] = true
	f.tr.mu.Unlock()
	script := filepath.Join(dir, "sdk.js")
	if err := os.WriteFile(script, []byte(nodeScript), 0o600); err != nil {
		t.Fatal(err)
	}
	p := f.policy(t, "iothubowner")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Env = append(os.Environ(),
		"NODE_PATH="+modules,
		"NODE_EXTRA_CA_CERTS="+caFile,
		"CS=HostName="+ip+";SharedAccessKeyName=iothubowner;SharedAccessKey="+p.PrimaryKey,
	)
	out, err := cmd.CombinedOutput()
	t.Logf("node output:\n%s", out)
	if err != nil {
		t.Fatalf("node: %v", err)
	}
}

func testCertificate(t *testing.T, ip string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "serviceapi test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

const nodeScript = `
'use strict';
const assert = require('assert');
const iothub = require('azure-iothub');
const cs = process.env.CS;
const registry = iothub.Registry.fromConnectionString(cs);
const client = iothub.Client.fromConnectionString(cs);

async function rejects(p, cls, what) {
  try { await p; } catch (e) {
    // Compare by name: azure-iothub may bundle its own azure-iot-common.
    assert.strictEqual(e.constructor.name, cls, what + ': ' + e.message);
    console.log('ok', what, '->', e.constructor.name);
    return;
  }
  throw new Error(what + ': did not fail');
}

(async () => {
  const created = (await registry.create({ deviceId: 'nd1' })).responseBody;
  assert.ok(created.authentication.symmetricKey.primaryKey, 'keys generated');
  console.log('ok create');
  await rejects(registry.create({ deviceId: 'nd1' }), 'DeviceAlreadyExistsError', 'create twice');

  const got = (await registry.get('nd1')).responseBody;
  assert.strictEqual(got.deviceId, 'nd1');
  await registry.update({ deviceId: 'nd1', status: 'disabled' });
  const upd = (await registry.get('nd1')).responseBody;
  assert.strictEqual(upd.status, 'disabled');
  assert.strictEqual(upd.authentication.symmetricKey.primaryKey, created.authentication.symmetricKey.primaryKey);
  await registry.update({ deviceId: 'nd1', status: 'enabled' });
  console.log('ok get/update');

  const list = (await registry.list()).responseBody;
  assert.ok(Array.isArray(list) && list.length === 1, 'list is an array');
  const stats = (await registry.getRegistryStatistics()).responseBody;
  assert.strictEqual(stats.totalDeviceCount, 1);
  console.log('ok list/stats');

  const bulk = (await registry.addDevices([{ deviceId: 'nb1' }, { deviceId: 'nb2' }])).responseBody;
  assert.strictEqual(bulk.isSuccessful, true, JSON.stringify(bulk));
  const rm = (await registry.removeDevices([{ deviceId: 'nb1' }, { deviceId: 'nb2' }], true)).responseBody;
  assert.strictEqual(rm.isSuccessful, true, JSON.stringify(rm));
  console.log('ok bulk');

  await registry.addModule({ deviceId: 'nd1', moduleId: 'm1' });
  const mods = (await registry.getModulesOnDevice('nd1')).responseBody;
  assert.strictEqual(mods.length, 1);
  assert.strictEqual((await registry.getModule('nd1', 'm1')).responseBody.moduleId, 'm1');
  await registry.removeModule('nd1', 'm1');
  console.log('ok modules');

  const twin = (await registry.getTwin('nd1')).responseBody;
  assert.strictEqual(twin.deviceId, 'nd1');
  await twin.update({ tags: { site: 'x' }, properties: { desired: { fw: '2' } } });
  const twin2 = (await registry.getTwin('nd1')).responseBody;
  assert.strictEqual(twin2.tags.site, 'x');
  assert.strictEqual(twin2.properties.desired.fw, '2');
  await rejects(registry.updateTwin('nd1', { tags: { a: 1 } }, 'bogus-etag'), 'InvalidEtagError', 'stale twin etag');
  console.log('ok twin');

  for (let i = 0; i < 3; i++) await registry.create({ deviceId: 'q' + i });
  const q = registry.createQuery('SELECT * FROM devices', 2);
  let n = 0, pages = 0;
  while (q.hasMoreResults) {
    const res = await q.nextAsTwin();
    n += res.result.length; pages++;
    assert.ok(pages < 10, 'query ends');
  }
  assert.strictEqual(n, 4); assert.strictEqual(pages, 2);
  console.log('ok query paging');

  for (const payload of [null, '', 'foo', {}, { a: [1, { b: null }] }]) {
    const r = (await client.invokeDeviceMethod('nd1', { methodName: 'echo', payload, responseTimeoutInSeconds: 10 })).result;
    assert.strictEqual(r.status, 200);
    assert.deepStrictEqual(r.payload, payload);
  }
  console.log('ok methods');

  await registry.delete('nd1');
  await rejects(registry.get('nd1'), 'DeviceNotFoundError', 'get deleted');
  await rejects(registry.delete('nd1'), 'DeviceNotFoundError', 'delete missing');
  await rejects(client.invokeDeviceMethod('nd1', { methodName: 'echo' }), 'DeviceNotFoundError', 'method on missing device');
  console.log('ALL OK');
})().catch((e) => { console.error('FAILED', e); process.exit(1); });
`
