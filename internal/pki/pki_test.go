package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

var loopback = []net.IP{net.IPv4(127, 0, 0, 1)}

func TestCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	a, err := LoadOrCreate(dir, []string{"localhost", "hub.example"}, loopback)
	if err != nil {
		t.Fatal(err)
	}
	p := a.Paths()
	for path, mode := range map[string]os.FileMode{p.CACert: 0o644, p.CAKey: 0o600, p.ServerCert: 0o644, p.ServerKey: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", filepath.Base(path), fi.Mode().Perm(), mode)
		}
	}
	if p.CACert != filepath.Join(dir, "ca.pem") || p.ServerKey != filepath.Join(dir, "server-key.pem") {
		t.Errorf("Paths = %+v", p)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("dir holds %d entries (temp files left?)", len(entries))
	}

	ca := a.CACertificate()
	if !ca.IsCA || !regexp.MustCompile(`^Moat Hub CA [0-9a-f]{8}$`).MatchString(ca.Subject.CommonName) {
		t.Errorf("CA: IsCA %v CN %q", ca.IsCA, ca.Subject.CommonName)
	}
	if d := time.Until(ca.NotAfter); d < 9*365*24*time.Hour || d > 11*365*24*time.Hour {
		t.Errorf("CA valid for %v, want about 10 years", d)
	}
	if k, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("CA key %v, want ECDSA P-256", ca.PublicKeyAlgorithm)
	}
	if !bytes.Equal(a.CACertPEM(), mustRead(t, p.CACert)) {
		t.Error("CACertPEM differs from ca.pem")
	}

	leaf := a.ServerCertificate().Leaf
	if leaf == nil {
		t.Fatal("ServerCertificate has no Leaf")
	}
	if !slices.Equal(leaf.DNSNames, []string{"localhost", "hub.example"}) || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(loopback[0]) {
		t.Errorf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || leaf.IsCA {
		t.Errorf("server usage %v IsCA %v", leaf.ExtKeyUsage, leaf.IsCA)
	}
	if d := time.Until(leaf.NotAfter); d < 700*24*time.Hour || d > 740*24*time.Hour {
		t.Errorf("server valid for %v, want about 2 years", d)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.CAPool(), DNSName: "hub.example"}); err != nil {
		t.Errorf("server certificate does not verify: %v", err)
	}
}

func TestReloadKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	a1, err := LoadOrCreate(dir, []string{"localhost", "127.0.0.2"}, loopback)
	if err != nil {
		t.Fatal(err)
	}
	// Same set in another order and spelling: nothing re-issued.
	a2, err := LoadOrCreate(dir, []string{"LOCALHOST.", "127.0.0.1"}, []net.IP{net.ParseIP("::ffff:127.0.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a1.CACertPEM(), a2.CACertPEM()) {
		t.Error("CA changed on reload")
	}
	if !bytes.Equal(a1.ServerCertificate().Certificate[0], a2.ServerCertificate().Certificate[0]) {
		t.Error("server certificate re-issued although names did not change")
	}
}

func TestSANChangeReissues(t *testing.T) {
	dir := t.TempDir()
	a1, err := LoadOrCreate(dir, []string{"localhost"}, loopback)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		names []string
		ips   []net.IP
	}{
		{[]string{"localhost", "hub.example"}, loopback},           // name added
		{[]string{"hub.example"}, loopback},                        // name removed
		{[]string{"hub.example"}, []net.IP{net.IPv4(10, 0, 0, 1)}}, // address changed
	} {
		a2, err := LoadOrCreate(dir, tc.names, tc.ips)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a1.CACertPEM(), a2.CACertPEM()) {
			t.Fatal("CA changed")
		}
		if bytes.Equal(a1.ServerCertificate().Certificate[0], a2.ServerCertificate().Certificate[0]) {
			t.Fatalf("server certificate not re-issued for %v %v", tc.names, tc.ips)
		}
		leaf := a2.ServerCertificate().Leaf
		if !slices.Equal(leaf.DNSNames, tc.names) || !leaf.IPAddresses[0].Equal(tc.ips[0]) {
			t.Errorf("SANs %v %v, want %v %v", leaf.DNSNames, leaf.IPAddresses, tc.names, tc.ips)
		}
		// And what is on disk is what is served.
		onDisk, err := tls.LoadX509KeyPair(a2.Paths().ServerCert, a2.Paths().ServerKey)
		if err != nil || !bytes.Equal(onDisk.Certificate[0], leaf.Raw) {
			t.Errorf("server.pem is not the served certificate (err %v)", err)
		}
		a1 = a2
	}
}

func TestExpiringServerCertReissued(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreate(dir, []string{"localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	certPEM, keyPEM, err := a.issue(leafSpec{commonName: "localhost", dnsNames: []string{"localhost"},
		usage: x509.ExtKeyUsageServerAuth, notAfter: now.Add(10 * 24 * time.Hour)}, now)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, a.Paths().ServerCert, certPEM)
	writeFile(t, a.Paths().ServerKey, keyPEM)
	a2, err := LoadOrCreate(dir, []string{"localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if time.Until(a2.ServerCertificate().Leaf.NotAfter) < 700*24*time.Hour {
		t.Errorf("certificate expiring in 10 days kept (NotAfter %v)", a2.ServerCertificate().Leaf.NotAfter)
	}
}

func TestBrokenServerFilesReissued(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreate(dir, []string{"localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A key that does not match server.pem (as after a crash between the
	// two writes) and a certificate from a foreign CA are both replaced.
	other, err := LoadOrCreate(t.TempDir(), []string{"localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, files := range map[string][2][]byte{
		"mismatched key": {mustRead(t, a.Paths().ServerCert), mustRead(t, other.Paths().ServerKey)},
		"foreign CA":     {mustRead(t, other.Paths().ServerCert), mustRead(t, other.Paths().ServerKey)},
		"garbage":        {[]byte("junk"), []byte("junk")},
	} {
		writeFile(t, a.Paths().ServerCert, files[0])
		writeFile(t, a.Paths().ServerKey, files[1])
		a2, err := LoadOrCreate(dir, []string{"localhost"}, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := a2.ServerCertificate().Leaf.CheckSignatureFrom(a.CACertificate()); err != nil {
			t.Errorf("%s: served certificate not from our CA: %v", name, err)
		}
	}
	if err := os.Remove(a.Paths().ServerKey); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(dir, []string{"localhost"}, nil); err != nil {
		t.Errorf("missing server key: %v", err)
	}
}

func TestCAProblems(t *testing.T) {
	t.Run("key missing", func(t *testing.T) {
		dir := t.TempDir()
		a, err := LoadOrCreate(dir, []string{"localhost"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		caPEM := a.CACertPEM()
		if err := os.Remove(a.Paths().CAKey); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreate(dir, []string{"localhost"}, nil); err == nil {
			t.Fatal("CA without key accepted")
		}
		if !bytes.Equal(mustRead(t, a.Paths().CACert), caPEM) {
			t.Error("existing CA certificate replaced")
		}
	})
	t.Run("cert missing means new CA", func(t *testing.T) {
		dir := t.TempDir()
		a, err := LoadOrCreate(dir, []string{"localhost"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(a.Paths().CACert); err != nil {
			t.Fatal(err)
		}
		a2, err := LoadOrCreate(dir, []string{"localhost"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a.CACertPEM(), a2.CACertPEM()) {
			t.Error("CA not recreated")
		}
		if err := a2.ServerCertificate().Leaf.CheckSignatureFrom(a2.CACertificate()); err != nil {
			t.Errorf("server certificate not re-issued by the new CA: %v", err)
		}
	})
	t.Run("key of another CA", func(t *testing.T) {
		dir := t.TempDir()
		a, _ := LoadOrCreate(dir, []string{"localhost"}, nil)
		other, _ := LoadOrCreate(t.TempDir(), []string{"localhost"}, nil)
		writeFile(t, a.Paths().CAKey, mustRead(t, other.Paths().CAKey))
		if _, err := LoadOrCreate(dir, []string{"localhost"}, nil); err == nil {
			t.Fatal("mismatched CA key accepted")
		}
	})
	t.Run("garbage cert", func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, CACertFile), []byte("not pem"))
		if _, err := LoadOrCreate(dir, []string{"localhost"}, nil); err == nil {
			t.Fatal("garbage CA accepted")
		}
	})
	t.Run("no names", func(t *testing.T) {
		if _, err := LoadOrCreate(t.TempDir(), []string{" "}, nil); err == nil {
			t.Fatal("no names accepted")
		}
	})
}

func TestTLSHandshake(t *testing.T) {
	a, err := LoadOrCreate(t.TempDir(), []string{"localhost"}, loopback)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{a.ServerCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_, _ = io.WriteString(c, "ok")
			_ = c.Close()
		}
	}()
	defer func() { _ = ln.Close(); <-done }()

	// The client trusts only the PEM, as an SDK given {ca: pem} does.
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(a.CACertPEM()) {
		t.Fatal("CACertPEM not usable")
	}
	for _, tc := range []struct {
		serverName string
		ok         bool
	}{
		{"localhost", true},
		{"127.0.0.1", true},
		{"hub.example", false},
		{"127.0.0.2", false},
	} {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(),
			&tls.Config{RootCAs: roots, ServerName: tc.serverName})
		if tc.ok {
			if err != nil {
				t.Errorf("%s: %v", tc.serverName, err)
				continue
			}
			b, _ := io.ReadAll(c)
			_ = c.Close()
			if string(b) != "ok" {
				t.Errorf("%s: read %q", tc.serverName, b)
			}
			continue
		}
		if err == nil {
			_ = c.Close()
			t.Errorf("%s: handshake succeeded for a name not in the certificate", tc.serverName)
			continue
		}
		var herr x509.HostnameError
		if !errors.As(err, &herr) {
			t.Errorf("%s: err %v, want a host name mismatch", tc.serverName, err)
		}
	}
}

func TestIssueClient(t *testing.T) {
	a, err := LoadOrCreate(t.TempDir(), []string{"localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := a.IssueClient("device-1", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "device-1" {
		t.Errorf("CN %q", leaf.Subject.CommonName)
	}
	if d := time.Until(leaf.NotAfter); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("valid for %v, want 48h", d)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.CAPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify for client auth: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.CAPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client certificate verifies for server auth")
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Error("key is not PKCS#8 PEM")
	}
	// Capped at the CA's lifetime.
	long, _, err := a.IssueClient("d2", 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if lc, _ := parseCert(long); lc.NotAfter.After(a.CACertificate().NotAfter) {
		t.Error("client certificate outlives the CA")
	}
	if _, _, err := a.IssueClient("", time.Hour); err == nil {
		t.Error("empty CN accepted")
	}
	if _, _, err := a.IssueClient("d", -time.Hour); err == nil {
		t.Error("negative validity accepted")
	}
	// Fresh keys and serials each time.
	c2, _, _ := a.IssueClient("device-1", time.Hour)
	if l2, _ := parseCert(c2); l2.SerialNumber.Cmp(leaf.SerialNumber) == 0 || bytes.Equal(l2.RawSubjectPublicKeyInfo, leaf.RawSubjectPublicKeyInfo) {
		t.Error("serial or key reused")
	}
}

func TestThumbprint(t *testing.T) {
	cert := &x509.Certificate{Raw: []byte("abc")}
	s1, s256 := Thumbprint(cert)
	// SHA-1 and SHA-256 of "abc" (FIPS 180 test vectors).
	if s1 != "A9993E364706816ABA3E25717850C26C9CD0D89D" {
		t.Errorf("sha1 %s", s1)
	}
	if s256 != "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD" {
		t.Errorf("sha256 %s", s256)
	}
	if strings.ToUpper(s1) != s1 {
		t.Error("not upper case")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
