package mqttdevice

import (
	"context"
	"maps"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-iot/moat/internal/message"
)

// c2dDelivery sends queued cloud-to-device messages to connected devices at QoS
// 1 and completes them on PUBACK. The queue is the source of truth; mochi's
// session keeps what is in flight and resends it after a clean=false reconnect,
// so a message already handed to a session is not sent again by us until that
// session is gone (clean=true or a hub restart).
type c2dDelivery struct {
	b       *Broker
	mu      sync.Mutex
	devices map[string]*c2dDevice
	closed  bool // under mu: no pass starts once close has begun waiting
	wg      sync.WaitGroup
}

type c2dDevice struct {
	deliver sync.Mutex // one delivery pass at a time per device

	mu         sync.Mutex
	sent       map[uint64]bool     // handed to the device's session
	byTopic    map[string][]uint64 // published, waiting for mochi's packet id
	byPacket   map[uint16]uint64   // in flight: packet id -> queue seq
	inboundAck map[uint16]bool     // acks mochi builds for the device's own publishes
}

func newC2DDelivery(b *Broker) *c2dDelivery {
	return &c2dDelivery{b: b, devices: make(map[string]*c2dDevice)}
}

func (d *c2dDelivery) device(id string, create bool) *c2dDevice {
	d.mu.Lock()
	defer d.mu.Unlock()
	dev := d.devices[id]
	if dev == nil && create {
		dev = &c2dDevice{sent: map[uint64]bool{}, byTopic: map[string][]uint64{}, byPacket: map[uint16]uint64{}, inboundAck: map[uint16]bool{}}
		d.devices[id] = dev
	}
	return dev
}

// sessionStarted forgets in-flight state the new session does not hold —
// all of it for a clean session, and for a resumed one what did not reach
// the inherited in-flight set — and delivers what is pending.
func (d *c2dDelivery) sessionStarted(cl *mqtt.Client, deviceID string, clean bool) {
	if dev := d.device(deviceID, false); dev != nil {
		// Under the pass lock: a pass that began on the old session
		// could otherwise mark a message sent after this and publish it to
		// the old client, leaving a mark that keeps the message from the
		// new session. A pass that ran while the session was taken over
		// did just that: its publish reached the old client after the new
		// one had copied its in-flight messages, and the message stayed
		// marked sent, never delivered (TestSessions, ~5% of runs).
		dev.deliver.Lock()
		dev.mu.Lock()
		if clean {
			clear(dev.sent)
			clear(dev.byPacket)
		} else {
			held := make(map[uint64]bool, len(dev.byPacket))
			for id, seq := range dev.byPacket {
				if _, ok := cl.State.Inflight.Get(id); ok {
					held[seq] = true
				} else {
					delete(dev.byPacket, id)
				}
			}
			for seq := range dev.sent {
				if !held[seq] {
					delete(dev.sent, seq)
				}
			}
		}
		clear(dev.byTopic)
		dev.mu.Unlock()
		dev.deliver.Unlock()
	}
	d.kick(deviceID)
}

// kick starts a delivery pass for a device in the background.
func (d *c2dDelivery) kick(deviceID string) {
	// Add and Wait must not race while the count is zero: a session that
	// starts as the hub shuts down would otherwise slip a pass past close.
	d.mu.Lock()
	if d.closed || d.b.ctx.Err() != nil {
		d.mu.Unlock()
		return
	}
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		d.deliver(d.b.ctx, deviceID)
	}()
}

// close stops new passes and waits for those running.
func (d *c2dDelivery) close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.wg.Wait()
}

func (d *c2dDelivery) deliver(ctx context.Context, deviceID string) {
	b := d.b
	cl, s, ok := b.client(identity{DeviceID: deviceID})
	if !ok || !s.c2dReady.Load() || !subscribedUnder(cl, deviceboundPrefix(identity{DeviceID: deviceID})) {
		return
	}
	dev := d.device(deviceID, true)
	dev.deliver.Lock()
	defer dev.deliver.Unlock()
	entries, err := b.cfg.C2D.Deliverable(ctx, deviceID, func(seq uint64) bool {
		dev.mu.Lock()
		defer dev.mu.Unlock()
		return dev.sent[seq]
	})
	if err != nil {
		b.log.Error("cloud-to-device delivery", "device", deviceID, "error", err)
		return
	}
	for _, e := range entries {
		sys := maps.Clone(e.Message.System)
		app := maps.Clone(e.Message.Properties)
		if app == nil {
			app = map[string]string{}
		}
		// iothub-ack travels as a plain property on MQTT.
		if v, ok := sys[message.SysAck]; ok {
			app[message.SysAck] = v
			delete(sys, message.SysAck)
		}
		delete(sys, message.SysEnqueuedTime)
		topic := deviceboundPrefix(identity{DeviceID: deviceID}) + message.EncodeBag(sys, app)
		dev.mu.Lock()
		dev.sent[e.Seq] = true
		dev.byTopic[topic] = append(dev.byTopic[topic], e.Seq)
		dev.mu.Unlock()
		if err := b.server.Publish(topic, e.Message.Body, false, 1); err != nil {
			b.log.Error("publish cloud-to-device message", "device", deviceID, "error", err)
			dev.mu.Lock()
			delete(dev.sent, e.Seq)
			dev.mu.Unlock()
		}
	}
}

func subscribedUnder(cl *mqtt.Client, prefix string) bool {
	for f := range cl.State.Subscriptions.GetAll() {
		if strings.HasPrefix(f, prefix) {
			return true
		}
	}
	return false
}

func (d *c2dDelivery) onQosPublish(cl *mqtt.Client, pk packets.Packet) {
	if strings.Contains(cl.ID, "/") {
		return // modules receive no cloud-to-device messages
	}
	dev := d.device(cl.ID, false)
	if dev == nil {
		return
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	switch pk.FixedHeader.Type {
	case packets.Puback: // mochi acking the device's own QoS 1 publish
		if _, clash := dev.byPacket[pk.PacketID]; clash {
			dev.inboundAck[pk.PacketID] = true
		}
	case packets.Publish:
		if _, ok := dev.byPacket[pk.PacketID]; ok {
			return // a resend of what we already track
		}
		seqs := dev.byTopic[pk.TopicName]
		if len(seqs) == 0 {
			return
		}
		dev.byPacket[pk.PacketID] = seqs[0]
		if len(seqs) == 1 {
			delete(dev.byTopic, pk.TopicName)
		} else {
			dev.byTopic[pk.TopicName] = seqs[1:]
		}
	}
}

func (d *c2dDelivery) onQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if strings.Contains(cl.ID, "/") {
		return
	}
	dev := d.device(cl.ID, false)
	if dev == nil {
		return
	}
	dev.mu.Lock()
	if dev.inboundAck[pk.PacketID] {
		delete(dev.inboundAck, pk.PacketID)
		dev.mu.Unlock()
		return
	}
	seq, ok := dev.byPacket[pk.PacketID]
	if ok {
		delete(dev.byPacket, pk.PacketID)
	}
	dev.mu.Unlock()
	if !ok {
		return
	}
	// The message stays marked as sent until the queue has removed it, and no
	// delivery pass runs meanwhile: a pass that found it in the queue but no
	// longer marked would send a completed message again.
	dev.deliver.Lock()
	defer dev.deliver.Unlock()
	if err := d.b.cfg.C2D.Complete(d.b.ctx, cl.ID, seq); err != nil {
		d.b.log.Error("complete cloud-to-device message", "device", cl.ID, "error", err)
	}
	dev.mu.Lock()
	delete(dev.sent, seq)
	dev.mu.Unlock()
}

func (d *c2dDelivery) onQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		// A clean=false takeover clears the old connection's in-flight
		// messages after the new one inherited them under the same packet
		// ids: they are still in flight, and mochi resends them.
		return
	}
	dev := d.device(cl.ID, false)
	if dev == nil {
		return
	}
	dev.mu.Lock()
	if seq, ok := dev.byPacket[pk.PacketID]; ok {
		delete(dev.byPacket, pk.PacketID)
		delete(dev.sent, seq)
	}
	dev.mu.Unlock()
}

// Notify is the cloud-to-device queue's enqueue callback.
func (b *Broker) Notify(deviceID string) { b.c2d.kick(deviceID) }
