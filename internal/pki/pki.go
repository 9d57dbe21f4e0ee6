// Package pki is the hub's private certificate authority: on first start it creates
// a CA and a server certificate for the hub's names and addresses, keeps them in
// the data directory, and issues no certificate it was not asked for.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File names inside the directory given to LoadOrCreate.
const (
	CACertFile     = "ca.pem"
	CAKeyFile      = "ca-key.pem"
	ServerCertFile = "server.pem"
	ServerKeyFile  = "server-key.pem"
)

const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 2 * 365 * 24 * time.Hour
	// renewBefore: a server certificate this close to expiry is re-issued
	// at start, so a hub restarted now and then never serves an expired one.
	renewBefore = 30 * 24 * time.Hour
	// backdate covers clients whose clocks run a little behind.
	backdate = 5 * time.Minute
	// defaultClientValidity is used when IssueClient gets no validity.
	defaultClientValidity = 365 * 24 * time.Hour
)

// Paths are the files an Authority keeps.
type Paths struct {
	CACert, CAKey, ServerCert, ServerKey string
}

// Authority is the hub's CA with its current server certificate. It is safe
// for concurrent use.
type Authority struct {
	paths  Paths
	caCert *x509.Certificate
	caKey  crypto.Signer
	caPEM  []byte
	server tls.Certificate
}

// LoadOrCreate loads the CA and server certificate kept in dir, creating
// them on first use. The server certificate is issued again when its names
// (names, plus any IP literals among them, and ips) differ from the ones
// asked for, when it expires within 30 days, or when it is missing, unreadable
// or not from this CA. ca.pem is written last and marks a complete CA: without
// it a new CA is made; with it but without its key, LoadOrCreate fails rather
// than replace a CA that clients may already trust.
//
// Two processes must not call LoadOrCreate on the same dir at once.
func LoadOrCreate(dir string, names []string, ips []net.IP) (*Authority, error) {
	dnsNames, ipAddrs := normalize(names, ips)
	if len(dnsNames) == 0 && len(ipAddrs) == 0 {
		return nil, errors.New("pki: no server names or addresses")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	a := &Authority{paths: Paths{
		CACert:     filepath.Join(dir, CACertFile),
		CAKey:      filepath.Join(dir, CAKeyFile),
		ServerCert: filepath.Join(dir, ServerCertFile),
		ServerKey:  filepath.Join(dir, ServerKeyFile),
	}}
	if err := a.loadOrCreateCA(); err != nil {
		return nil, err
	}
	if err := a.loadOrIssueServer(dnsNames, ipAddrs, time.Now()); err != nil {
		return nil, err
	}
	return a, nil
}

// normalize lower-cases and de-duplicates names, moves IP literals among them
// to the addresses and de-duplicates those, so that comparisons with a
// stored certificate ignore order and spelling.
func normalize(names []string, ips []net.IP) ([]string, []net.IP) {
	var dns []string
	var addrs []net.IP
	addIP := func(ip net.IP) {
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		if !slices.ContainsFunc(addrs, ip.Equal) {
			addrs = append(addrs, ip)
		}
	}
	for _, n := range names {
		n = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
		if n == "" {
			continue
		}
		if ip := net.ParseIP(n); ip != nil {
			addIP(ip)
			continue
		}
		if !slices.Contains(dns, n) {
			dns = append(dns, n)
		}
	}
	for _, ip := range ips {
		if ip != nil {
			addIP(ip)
		}
	}
	return dns, addrs
}

func (a *Authority) loadOrCreateCA() error {
	certPEM, err := os.ReadFile(a.paths.CACert)
	if errors.Is(err, fs.ErrNotExist) {
		return a.createCA()
	}
	if err != nil {
		return fmt.Errorf("pki: read CA: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return fmt.Errorf("pki: %s: %w", a.paths.CACert, err)
	}
	keyPEM, err := os.ReadFile(a.paths.CAKey)
	if err != nil {
		return fmt.Errorf("pki: CA certificate present but its key is not readable: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return fmt.Errorf("pki: %s: %w", a.paths.CAKey, err)
	}
	if !cert.IsCA || !publicKeyEqual(cert.PublicKey, key.Public()) {
		return fmt.Errorf("pki: %s is not a CA certificate for the key in %s", a.paths.CACert, a.paths.CAKey)
	}
	if time.Now().After(cert.NotAfter) {
		return fmt.Errorf("pki: CA certificate %s expired on %s; move the directory's files away to create a new CA",
			a.paths.CACert, cert.NotAfter.Format(time.DateOnly))
	}
	a.caCert, a.caKey, a.caPEM = cert, key, certPEM
	return nil
}

func (a *Authority) createCA() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: CA key: %w", err)
	}
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The random suffix tells apart the CAs of different hubs in a
		// trust store.
		Subject:               pkix.Name{CommonName: "Moat Hub CA " + hex.EncodeToString(id[:]), Organization: []string{"Moat"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// Leaf certificates only: a stolen server key cannot mint a sub-CA.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("pki: create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// Key first: ca.pem is what marks the CA as complete.
	if err := writeAtomic(a.paths.CAKey, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeAtomic(a.paths.CACert, certPEM, 0o644); err != nil {
		return err
	}
	a.caCert, a.caKey, a.caPEM = cert, key, certPEM
	return nil
}

func (a *Authority) loadOrIssueServer(dns []string, ips []net.IP, now time.Time) error {
	if tc, ok := a.loadServer(dns, ips, now); ok {
		a.server = tc
		return nil
	}
	certPEM, keyPEM, err := a.issue(leafSpec{
		commonName: firstName(dns, ips),
		dnsNames:   dns,
		ips:        ips,
		usage:      x509.ExtKeyUsageServerAuth,
		notAfter:   now.Add(serverValidity),
	}, now)
	if err != nil {
		return err
	}
	// Key first: a server.pem that does not match the key is re-issued.
	if err := writeAtomic(a.paths.ServerKey, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeAtomic(a.paths.ServerCert, certPEM, 0o644); err != nil {
		return err
	}
	tc, err := x509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	a.server = tc
	return nil
}

// loadServer returns the stored server certificate if it can be served as
// it is.
func (a *Authority) loadServer(dns []string, ips []net.IP, now time.Time) (tls.Certificate, bool) {
	certPEM, err1 := os.ReadFile(a.paths.ServerCert)
	keyPEM, err2 := os.ReadFile(a.paths.ServerKey)
	if err1 != nil || err2 != nil {
		return tls.Certificate{}, false
	}
	tc, err := x509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, false
	}
	leaf := tc.Leaf
	if leaf.CheckSignatureFrom(a.caCert) != nil || now.Add(renewBefore).After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return tls.Certificate{}, false
	}
	haveDNS, haveIPs := normalize(leaf.DNSNames, leaf.IPAddresses)
	sameDNS := len(haveDNS) == len(dns) && !slices.ContainsFunc(dns, func(n string) bool { return !slices.Contains(haveDNS, n) })
	sameIPs := len(haveIPs) == len(ips) && !slices.ContainsFunc(ips, func(ip net.IP) bool { return !slices.ContainsFunc(haveIPs, ip.Equal) })
	if !sameDNS || !sameIPs {
		return tls.Certificate{}, false
	}
	return tc, true
}

func firstName(dns []string, ips []net.IP) string {
	if len(dns) > 0 {
		return dns[0]
	}
	return ips[0].String()
}

type leafSpec struct {
	commonName string
	dnsNames   []string
	ips        []net.IP
	usage      x509.ExtKeyUsage
	notAfter   time.Time
}

// issue creates a key and a leaf certificate signed by the CA, valid at
// most as long as the CA.
func (a *Authority) issue(s leafSpec, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: s.commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              s.notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{s.usage},
		BasicConstraintsValid: true,
		DNSNames:              s.dnsNames,
		IPAddresses:           s.ips,
	}
	if tmpl.NotAfter.After(a.caCert.NotAfter) {
		tmpl.NotAfter = a.caCert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.caCert, key.Public(), a.caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue %q: %w", s.commonName, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// IssueClient issues a TLS client certificate with subject CN commonName
// (a device id, for IoT Hub's certificateAuthority authentication) valid
// for validity (a year if 0). It is not kept on disk.
func (a *Authority) IssueClient(commonName string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if commonName == "" {
		return nil, nil, errors.New("pki: client certificate needs a common name")
	}
	if validity < 0 {
		return nil, nil, errors.New("pki: negative validity")
	}
	if validity == 0 {
		validity = defaultClientValidity
	}
	now := time.Now()
	return a.issue(leafSpec{
		commonName: commonName,
		usage:      x509.ExtKeyUsageClientAuth,
		notAfter:   now.Add(validity),
	}, now)
}

// CACertPEM returns the CA certificate in PEM form, for clients to trust.
func (a *Authority) CACertPEM() []byte { return bytes.Clone(a.caPEM) }

// CACertificate returns the parsed CA certificate. Callers must not modify it.
func (a *Authority) CACertificate() *x509.Certificate { return a.caCert }

// ServerCertificate returns the server certificate and key for a tls.Config.
func (a *Authority) ServerCertificate() tls.Certificate { return a.server }

// CAPool returns a new pool holding the CA certificate, e.g. to verify
// client certificates the CA issued.
func (a *Authority) CAPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.caCert)
	return p
}

// Paths returns the files the authority keeps.
func (a *Authority) Paths() Paths { return a.paths }

// Thumbprint returns the certificate's SHA-1 and SHA-256 fingerprints in
// upper-case hex without separators, as IoT Hub shows and accepts them.
func Thumbprint(cert *x509.Certificate) (sha1hex, sha256hex string) {
	s1 := sha1.Sum(cert.Raw)
	s256 := sha256.Sum256(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(s1[:])), strings.ToUpper(hex.EncodeToString(s256[:]))
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil // never zero
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func parseKey(keyPEM []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, errors.New("no PEM key")
	}
	var key any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q", b.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	return s, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func x509KeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	tc, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: server key pair: %w", err)
	}
	if tc.Leaf == nil { // set by X509KeyPair since Go 1.23; kept for clarity
		if tc.Leaf, err = x509.ParseCertificate(tc.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("pki: %w", err)
		}
	}
	return tc, nil
}

// writeAtomic replaces path with data so that a crash leaves the old file or
// the new one, never a torn one.
func writeAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	ok = true
	// Make the rename itself durable.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
