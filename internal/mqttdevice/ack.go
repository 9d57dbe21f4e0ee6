package mqttdevice

import (
	"hash/maphash"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Telemetry at QoS 1 is acknowledged only once the message is durable. Waiting
// for that inside the broker's read loop would allow one message per device per
// fsync; instead the read loop hands the message to the log and moves on, and
// the acknowledgement is written when the log's group commit reports back.
// Acks go through a few writer goroutines, each owning a fixed share of the
// clients, so one client's PUBACKs keep their order (MQTT requires it) and a
// client that stops reading stalls only its share, never the log's committer.

const (
	ackShards = 4
	// maxUnacked bounds the messages a device may have waiting for durability;
	// a client that ignores flow control is disconnected rather than allowed
	// to queue without limit.
	maxUnacked = 4096
)

type ack struct {
	cl  *mqtt.Client
	s   *connState
	id  uint16
	err error
}

type acker struct {
	b      *Broker
	seed   maphash.Seed
	shards [ackShards]chan ack
	wg     sync.WaitGroup
}

func newAcker(b *Broker) *acker {
	a := &acker{b: b, seed: maphash.MakeSeed()}
	for i := range a.shards {
		a.shards[i] = make(chan ack, 4096)
	}
	return a
}

func (a *acker) start() {
	for _, ch := range a.shards {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for {
				select {
				case <-a.b.ctx.Done():
					return
				case k := <-ch:
					a.write(k)
				}
			}
		}()
	}
}

func (a *acker) write(k ack) {
	k.s.unacked.Add(-1)
	if k.err != nil {
		a.b.log.Error("telemetry not accepted; closing connection so the device resends", "clientId", k.cl.ID, "error", k.err)
		k.cl.Stop(k.err)
		return
	}
	if k.id == 0 {
		return // QoS 0: nothing to acknowledge
	}
	_ = k.cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: k.id})
}

// done returns the callback for one message. It runs on the log's committer
// and must not block: the shard queue is large, and if it is ever full the
// hand-off waits in a goroutine of its own rather than stall the committer.
func (a *acker) done(cl *mqtt.Client, s *connState, id uint16) func(error) {
	ch := a.shards[maphash.String(a.seed, cl.ID)%ackShards]
	return func(err error) {
		k := ack{cl: cl, s: s, id: id, err: err}
		select {
		case ch <- k:
		default:
			go func() {
				select {
				case ch <- k:
				case <-a.b.ctx.Done():
				}
			}()
		}
	}
}
