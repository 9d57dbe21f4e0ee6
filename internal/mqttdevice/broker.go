// Package mqttdevice is IoT Hub's MQTT device protocol on top of the mochi-mqtt
// broker core: it authenticates CONNECTs (SAS tokens and X.509) against the
// registry, confines every identity to its own topics, turns telemetry
// publishes into messages, serves twin and method topics, and delivers
// cloud-to-device messages. Plain MQTT topics outside IoT Hub's namespace work
// as in any broker for authenticated clients.
package mqttdevice

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-iot/moat/internal/c2d"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/mqttframe"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
	"github.com/moat-iot/moat/internal/session"
)

// MaxMessageSize is IoT Hub's device-to-cloud message limit.
const MaxMessageSize = 256 * 1024

// Config wires the broker to the hub.
type Config struct {
	HostName string
	Registry *registry.Registry
	// Policies returns the current shared access policies (for policy-signed
	// device tokens, which need DeviceConnect).
	Policies func() []sas.Policy
	Methods  *methods.Invoker
	C2D      *c2d.Queue
	// Accept takes an accepted telemetry message. It must make the message
	// durable (or hand it to where it is) before returning nil: the device's
	// PUBACK is sent only afterwards. An error disconnects the device without
	// an acknowledgement, so it sends again.
	Accept func(ctx context.Context, m message.Message) error
	// AcceptAsync, if set, takes telemetry without waiting: done is called
	// exactly once when the message is durable (nil) or cannot be (an error),
	// from any goroutine, and must not block. The device's PUBACK is sent from
	// done, so the broker keeps reading while the log commits.
	AcceptAsync func(m message.Message, done func(error))
	// OnConnectionChange, if set, is told of every connect and disconnect of
	// an identity (not of a connection taken over by the same identity), for
	// IoT Hub's connection state events. It must not block.
	OnConnectionChange func(deviceID, moduleID string, connected bool)
	// Sessions persists the subscriptions of clean=false sessions across hub
	// restarts; nil keeps them in memory only.
	Sessions session.Store
	// ClientCAs verifies devices whose authentication type is
	// certificateAuthority.
	ClientCAs *x509.CertPool
	Log       *slog.Logger
	Now       func() time.Time
}

// Broker is the device-facing MQTT server.
type Broker struct {
	cfg    Config
	server *mqtt.Server
	log    *slog.Logger

	// sessions maps a live *mqtt.Client to what its CONNECT established.
	sessions sync.Map // *mqtt.Client -> *connState
	c2d      *c2dDelivery
	acks     *acker

	connected atomic.Int64
	// established counts sessions ever established (Connected, and those
	// since gone).
	established atomic.Uint64
	ctx         context.Context
	cancel      context.CancelFunc
}

// IdleProbe is how long a device connection may be quiet before its
// goroutine waits on the socket under a small stack.
const IdleProbe = 2 * time.Second

// New builds the broker. Call Start before ServeConn.
func New(cfg Config) (*Broker, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1
	caps.RetainAvailable = 0 // IoT Hub does not keep retained messages
	caps.MaximumPacketSize = MaxMessageSize + 16*1024
	caps.Compatibilities.NoInheritedPropertiesOnAck = true // strict MQTT 5 clients reject inherited user properties
	caps.MaximumSessionExpiryInterval = 7 * 24 * 3600
	// mochi allocates each client's outbound queue at this length up front
	// (8192 pointers, 64 KiB, by default): most of an idle connection's
	// memory. A device rarely has more than a few messages queued to it.
	caps.MaximumClientWritesPending = 128
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// The frame guard under mochi already buffers socket reads (and
		// hands out whole packets), so mochi's own buffer only needs to
		// hold fixed headers and small packets (PUBACK, PINGREQ); larger
		// reads pass through. Every idle connection keeps this buffer.
		ClientNetReadBufferSize: 64,
		// A device quiet for this long waits for its next packet on the
		// socket under a few frames instead of inside a TLS read, so its
		// goroutine's stack shrinks from 8 to 2 KiB (see third_party).
		// Longer than the gap between messages of a device that sends
		// every second, which would otherwise pay a wake-up and two
		// syscalls per message to enter and leave the wait.
		IdleProbe:    IdleProbe,
		InlineClient: true,
		// mochi logs whole packets (payloads included) at Warn; our hook logs
		// what an operator needs, so only mochi's errors get through.
		Logger: slog.New(minLevel{Handler: cfg.Log.Handler(), min: slog.LevelError}),
	})
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{cfg: cfg, server: srv, log: cfg.Log, ctx: ctx, cancel: cancel}
	b.c2d = newC2DDelivery(b)
	b.acks = newAcker(b)
	if err := srv.AddHook(&hook{b: b}, nil); err != nil {
		cancel()
		return nil, fmt.Errorf("add mqtt hook: %w", err)
	}
	return b, nil
}

// Start starts the broker's housekeeping loops.
func (b *Broker) Start() error {
	b.acks.start()
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("start mqtt server: %w", err)
	}
	return nil
}

// Close disconnects every client and stops the broker.
func (b *Broker) Close() error {
	// mochi closes only the clients of listeners it owns; ours are handed in
	// with EstablishConnection, so end them here while the registry can still
	// record the disconnects.
	for _, cl := range b.server.Clients.GetAll() {
		if !cl.Net.Inline && !cl.Closed() {
			cl.Stop(errors.New("hub shutting down"))
		}
	}
	b.c2d.close()
	b.cancel()
	b.acks.wg.Wait()
	return b.server.Close()
}

// ServeConn runs one client connection (TLS already terminated, or a WebSocket
// stream) until it ends. listener names where it came from, for logs and metrics.
func (b *Broker) ServeConn(c net.Conn, listener string) error {
	g := mqttframe.Guard(c, mqttframe.Options{
		MaxPacketSize: MaxMessageSize + 16*1024,
		OnReject: func(reason error) {
			b.log.Warn("malformed MQTT packet; closing connection", "listener", listener, "remote", c.RemoteAddr().String(), "reason", reason.Error())
		},
	})
	return b.server.EstablishConnection(listener, g)
}

// Connected is the number of authenticated live connections.
func (b *Broker) Connected() int { return int(b.connected.Load()) }

// SessionsEstablished is how many connections have been authenticated and
// set up since the broker started.
func (b *Broker) SessionsEstablished() uint64 { return b.established.Load() }

// client returns the live client of an identity, if connected.
func (b *Broker) client(id identity) (*mqtt.Client, *connState, bool) {
	cl, ok := b.server.Clients.Get(id.clientID())
	if !ok || cl.Closed() {
		return nil, nil, false
	}
	v, ok := b.sessions.Load(cl)
	if !ok {
		return nil, nil, false
	}
	return cl, v.(*connState), true
}

// publishDirect writes a QoS 0 publish to one client. IoT Hub's twin and method
// topics are shared filter names across devices, so these must never go through
// the broker's topic fan-out.
func publishDirect(cl *mqtt.Client, topic string, payload []byte) error {
	return cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     payload,
	})
}

// minLevel drops records below min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{Handler: h.Handler.WithAttrs(a), min: h.min}
}

func (h minLevel) WithGroup(n string) slog.Handler {
	return minLevel{Handler: h.Handler.WithGroup(n), min: h.min}
}
