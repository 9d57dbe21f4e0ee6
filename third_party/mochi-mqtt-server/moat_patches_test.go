// SPDX-License-Identifier: MIT

// Tests of the moat patches (see third_party/README.md in the moat repository):
// connections keep no writer goroutine and no outbound queue while nothing is
// queued to them.

package mqtt

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	"github.com/stretchr/testify/require"
)

func newQueueTestClient(pending int) (*Client, net.Conn) {
	r, w := net.Pipe()
	cl := newClient(w, &ops{
		info:  new(system.Info),
		hooks: new(Hooks),
		log:   logger,
		options: &Options{
			Capabilities: &Capabilities{
				ReceiveMaximum:             10,
				MaximumInflight:            5,
				MaximumClientWritesPending: int32(pending),
				maximumPacketID:            65535,
			},
		},
	})
	cl.ID = "queue"
	cl.Properties.ProtocolVersion = 4
	return cl, r
}

// readPublishes reads n QoS 0 publishes from r and returns their payloads.
func readPublishes(t *testing.T, r net.Conn, n int) []string {
	t.Helper()
	_ = r.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(r)
	out := make([]string, 0, n)
	for len(out) < n {
		b, err := br.ReadByte()
		require.NoError(t, err, "after %d publishes", len(out))
		require.Equal(t, byte(packets.Publish<<4), b)
		rem, _, err := packets.DecodeLength(br)
		require.NoError(t, err)
		body := make([]byte, rem)
		_, err = io.ReadFull(br, body)
		require.NoError(t, err)
		tl := int(binary.BigEndian.Uint16(body))
		out = append(out, string(body[2+tl:]))
	}
	return out
}

func TestOutboundQueueMadeOnFirstUse(t *testing.T) {
	s := newServer()
	cl, r := newQueueTestClient(16)
	defer r.Close()
	require.Nil(t, cl.State.outbound.Load())
	require.Equal(t, 0, cl.pendingOutbound())

	_, err := s.publishToClient(cl, packets.Subscription{Filter: "a"}, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "a",
		Payload:     []byte("x"),
	})
	require.NoError(t, err)
	require.NotNil(t, cl.State.outbound.Load())
	require.Equal(t, []string{"x"}, readPublishes(t, r, 1))
}

// Publishers on many goroutines: every packet is written, each publisher's in
// order, and the writer goroutine exits once the queue is empty — including
// when a packet arrives just as the writer is about to exit.
func TestWriterDrainsAndExits(t *testing.T) {
	const publishers, each = 8, 300
	pause := func() { time.Sleep(50 * time.Microsecond) }
	testHookWriterIdle.Store(&pause)
	defer testHookWriterIdle.Store(nil)
	for round := 0; round < 20; round++ {
		s := newServer()
		cl, r := newQueueTestClient(publishers * each)
		var wg sync.WaitGroup
		for p := 0; p < publishers; p++ {
			wg.Add(1)
			go func(p int) {
				defer wg.Done()
				for i := 0; i < each; i++ {
					_, err := s.publishToClient(cl, packets.Subscription{Filter: "t"}, packets.Packet{
						FixedHeader: packets.FixedHeader{Type: packets.Publish},
						TopicName:   "t",
						Payload:     fmt.Appendf(nil, "%d/%d", p, i),
					})
					if err != nil {
						t.Errorf("publish: %v", err)
						return
					}
					if i%50 == 0 {
						time.Sleep(time.Duration(p) * 10 * time.Microsecond)
					}
				}
			}(p)
		}
		got := readPublishes(t, r, publishers*each)
		wg.Wait()
		next := make([]int, publishers)
		for _, g := range got {
			var p, i int
			_, err := fmt.Sscanf(g, "%d/%d", &p, &i)
			require.NoError(t, err)
			require.Equal(t, next[p], i, "round %d: publisher %d out of order", round, p)
			next[p]++
		}
		require.Eventually(t, func() bool { return !cl.State.writerActive.Load() }, 5*time.Second, time.Millisecond, "writer still active after the queue drained")
		require.Equal(t, int32(0), cl.State.outboundQty)
		_ = r.Close()
	}
}

// A closed client's queue is not written, and no writer stays behind.
func TestWriterStopsOnClosedClient(t *testing.T) {
	s := newServer()
	cl, r := newQueueTestClient(16)
	defer r.Close()
	cl.Stop(nil)
	_, err := s.publishToClient(cl, packets.Subscription{Filter: "a"}, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "a",
	})
	require.ErrorIs(t, err, packets.CodeDisconnect)
	require.False(t, cl.State.writerActive.Load())
}

// The once-a-second housekeeping allocates nothing when no client has expired
// or holds inflight messages, however many are connected.
func TestHousekeepingWithoutGarbage(t *testing.T) {
	s := newServer()
	for i := 0; i < 1000; i++ {
		cl, _, _ := newTestClient()
		cl.ID = fmt.Sprintf("c%d", i)
		s.Clients.Add(cl)
	}
	now := time.Now().Unix()
	// AllocsPerRun counts the whole process's allocations, and goroutines
	// left by other tests add to it now and then: the least of several runs
	// is this code's own (GetAll made at least 20 per call here).
	least := -1.0
	for i := 0; i < 5; i++ {
		allocs := testing.AllocsPerRun(10, func() {
			s.clearExpiredClients(now)
			s.clearExpiredInflights(now)
		})
		if least < 0 || allocs < least {
			least = allocs
		}
	}
	require.Zero(t, least)

	// They still find what they are for.
	cl, _ := s.Clients.Get("c7")
	cl.State.Inflight.Set(packets.Packet{PacketID: 1, Created: now - 100})
	cl.Stop(nil)
	atomic.StoreInt64(&cl.State.disconnected, now-100)
	require.Len(t, s.Clients.matching(isStopped), 1)
	require.Len(t, s.Clients.matching(hasInflight), 1)
	s.Options.Capabilities.MaximumSessionExpiryInterval = 10
	s.Options.Capabilities.MaximumMessageExpiryInterval = 10
	s.clearExpiredInflights(now)
	require.Equal(t, 0, cl.State.Inflight.Len())
	s.clearExpiredClients(now)
	_, ok := s.Clients.Get("c7")
	require.False(t, ok)
}

// The client keeps its own copy of the username, not a slice of the CONNECT
// packet, which holds the password as well.
func TestParseConnectCopiesUsername(t *testing.T) {
	cl, _ := newQueueTestClient(0)
	body := []byte("user-namepassword")
	pk := packets.Packet{ProtocolVersion: 4, Connect: packets.ConnectParams{
		Username: body[:9], Password: body[9:], UsernameFlag: true, PasswordFlag: true, ClientIdentifier: "c", Keepalive: 60,
	}}
	cl.ParseConnect("tcp", pk)
	copy(body, "XXXXXXXXXXXXXXXXX")
	require.Equal(t, "user-name", string(cl.Properties.Username))
}

// heapInUse (patch 8) reads what runtime.ReadMemStats calls HeapInuse.
func TestHeapInUseMatchesMemStats(t *testing.T) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	got := heapInUse()
	diff := got - int64(m.HeapInuse)
	if diff < 0 {
		diff = -diff
	}
	if got <= 0 || diff > 1<<20 {
		t.Fatalf("heapInUse() = %d, MemStats.HeapInuse = %d", got, m.HeapInuse)
	}
}
