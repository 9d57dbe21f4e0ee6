package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestRefusedBeforeTLS checks that a refused connection is closed before the
// server sends a single byte, so no certificate leaks to a refused peer.
func TestRefusedBeforeTLS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admitted := make(chan string, 4)
	var allow atomic.Bool
	admit := func(listener string, local, remote net.Addr) bool {
		admitted <- listener
		return allow.Load()
	}
	served := make(chan struct{}, 4)
	s := &StreamServer{Name: "mqtts", TLS: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}, Log: slog.New(slog.DiscardHandler),
		Handler: func(c net.Conn, _ string) error {
			served <- struct{}{}
			_, err := c.Write([]byte("hello"))
			return err
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx, Listener(ln, "mqtts", admit)) }()

	// Refused: the raw socket reads EOF, with no ServerHello.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00}) // start of a ClientHello
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.Read(make([]byte, 1024))
	if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("refused connection read %d bytes, err %v", n, err)
	}
	c.Close()
	if l := <-admitted; l != "mqtts" {
		t.Fatalf("admit saw listener %q", l)
	}

	// Admitted: the TLS handshake completes and the handler runs.
	allow.Store(true)
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("admitted connection: %q %v", buf, err)
	}
	tc.Close()
	select {
	case <-served:
	case <-time.After(2 * time.Second):
		t.Fatal("handler not run")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestHandshakeTimeout checks that a peer that never finishes TLS is dropped.
func TestHandshakeTimeoutDoesNotBlockOthers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &StreamServer{Name: "mqtts", TLS: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}, Log: slog.New(slog.DiscardHandler),
		Handler: func(c net.Conn, _ string) error { _, err := c.Write([]byte("x")); return err }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Serve(ctx, ln) }()
	idle, err := net.Dial("tcp", ln.Addr().String()) // says nothing
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("a silent peer blocked the accept loop: %v", err)
	}
	tc.Close()
}
