// SPDX-License-Identifier: MIT

// Tests of the moat patch that lets a quiet connection wait on its socket
// under a few frames (Options.IdleProbe).

package mqtt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	"github.com/stretchr/testify/require"
)

const testIdleProbe = 50 * time.Millisecond

// slowConn writes the first bytes of each write, then the rest after a
// pause: a packet (or TLS record) arrives in two pieces.
type slowConn struct {
	net.Conn
	head  int
	pause time.Duration
}

func (c *slowConn) Write(p []byte) (int, error) {
	if len(p) <= c.head {
		return c.Conn.Write(p)
	}
	n, err := c.Conn.Write(p[:c.head])
	if err != nil {
		return n, err
	}
	time.Sleep(c.pause)
	m, err := c.Conn.Write(p[c.head:])
	return n + m, err
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"idle.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// idlePair connects a client over loopback TCP (and TLS when useTLS) and
// starts the server side's read loop; packets handled arrive on the channel
// and the loop's end on done. The device side may pause inside its writes.
func idlePair(t *testing.T, useTLS bool, keepalive uint16, pause time.Duration) (cl *Client, device net.Conn, got chan byte, done chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { raw.Close() })
	server := <-accepted
	require.NotNil(t, server)
	device = &slowConn{Conn: raw, head: 1, pause: pause}
	if useTLS {
		cert := selfSigned(t)
		srv := tls.Server(server, &tls.Config{Certificates: []tls.Certificate{cert}})
		cli := tls.Client(device, &tls.Config{InsecureSkipVerify: true}) // a test's own certificate
		errc := make(chan error, 1)
		go func() { errc <- srv.Handshake() }()
		require.NoError(t, cli.Handshake())
		require.NoError(t, <-errc)
		server, device = srv, cli
	}
	cl = newClient(server, &ops{
		info:  new(system.Info),
		hooks: new(Hooks),
		log:   logger,
		options: &Options{
			IdleProbe:               testIdleProbe,
			ClientNetReadBufferSize: 64,
			Capabilities:            &Capabilities{ReceiveMaximum: 10, MaximumInflight: 5, maximumPacketID: 65535},
		},
	})
	cl.ID = "idle"
	cl.Properties.ProtocolVersion = 4
	cl.State.Keepalive = keepalive
	got = make(chan byte, 16)
	done = make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- cl.Read(func(_ *Client, pk packets.Packet) error {
			got <- pk.FixedHeader.Type
			return nil
		})
	}()
	t.Cleanup(func() { cl.Stop(nil); <-finished })
	return cl, device, got, done
}

var pingreq = []byte{packets.Pingreq << 4, 0}

// waitingOnSocket says whether a goroutine is parked in waitReadable.
func waitingOnSocket() bool {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return strings.Contains(b.String(), "server/v2.waitReadable")
}

func expectPacket(t *testing.T, got chan byte, what string) {
	t.Helper()
	select {
	case typ := <-got:
		require.Equal(t, byte(packets.Pingreq), typ, what)
	case <-time.After(5 * time.Second):
		t.Fatalf("no packet handled: %s", what)
	}
}

func waitOnSocket(t *testing.T, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !waitingOnSocket() {
		if time.Now().After(deadline) {
			t.Fatalf("the read loop does not wait on the socket: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestIdleWaitOnSocket(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := map[bool]string{false: "tcp", true: "tls"}[useTLS]
		t.Run(name, func(t *testing.T) {
			// Every packet arrives in two pieces 3 probes apart, so the
			// probe also times out on a part of a packet (or TLS record).
			_, device, got, _ := idlePair(t, useTLS, 0, 3*testIdleProbe)
			for i := 0; i < 3; i++ {
				waitOnSocket(t, "quiet connection")
				_, err := device.Write(pingreq)
				require.NoError(t, err)
				expectPacket(t, got, "after the wait on the socket")
			}
			// Packets that come together are all handled, however the
			// reads buffer them.
			_, err := device.Write(append(append(append([]byte{}, pingreq...), pingreq...), pingreq...))
			require.NoError(t, err)
			for i := 0; i < 3; i++ {
				expectPacket(t, got, "packets sent together")
			}
		})
	}
}

func TestIdleWaitKeepsKeepalive(t *testing.T) {
	_, _, _, done := idlePair(t, true, 1, 0) // 1.5 s without a packet ends the connection
	start := time.Now()
	select {
	case err := <-done:
		require.Error(t, err)
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout(), "%v", err)
		require.GreaterOrEqual(t, time.Since(start), time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("a quiet connection outlived its keepalive")
	}
}

func TestIdleWaitEndsOnStop(t *testing.T) {
	cl, _, _, done := idlePair(t, true, 0, 0)
	waitOnSocket(t, "before Stop")
	cl.Stop(nil)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not end a read loop waiting on its socket")
	}
}

func TestIdleWaitSeesPeerClose(t *testing.T) {
	_, device, _, done := idlePair(t, false, 0, 0)
	waitOnSocket(t, "before the peer closes")
	require.NoError(t, device.Close())
	select {
	case err := <-done:
		require.Error(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the peer's close did not end a read loop waiting on its socket")
	}
}
