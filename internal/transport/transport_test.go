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
	"os"
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

// TestRecheckClosesRefusedLiveConnections checks that a policy change closes
// exactly the live connections the new policy refuses, at once, and that
// closed connections leave the set.
func TestRecheckClosesRefusedLiveConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := NewConns()
	s := &StreamServer{Name: "mqtts", TLS: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}, Log: slog.New(slog.DiscardHandler),
		Handler: func(c net.Conn, _ string) error {
			_, err := io.Copy(c, c) // echo until closed
			return err
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx, TrackedListener(ln, "mqtts", nil, conns)) }()
	t.Cleanup(func() { cancel(); <-done })

	dial := func() *tls.Conn {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	keep, drop := dial(), dial()
	if n := conns.Len(); n != 2 {
		t.Fatalf("tracked %d connections, want 2", n)
	}
	dropPort := drop.LocalAddr().(*net.TCPAddr).Port
	start := time.Now()
	closed := conns.Recheck(func(listener string, local, remote net.Addr) bool {
		if listener != "mqtts" {
			t.Errorf("listener %q", listener)
		}
		return remote.(*net.TCPAddr).Port != dropPort
	})
	if closed != 1 {
		t.Fatalf("Recheck closed %d, want 1", closed)
	}
	_ = drop.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := drop.Read(make([]byte, 1)); err == nil {
		t.Fatal("refused connection still readable")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("refused connection was not closed within a second")
	}
	t.Logf("closed after %v", time.Since(start))
	if _, err := keep.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	_ = keep.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(keep, make([]byte, 1)); err != nil {
		t.Fatalf("kept connection disturbed: %v", err)
	}
	keep.Close()
	deadline := time.Now().Add(5 * time.Second)
	for conns.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still tracked after both closed", conns.Len())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
