package mqttdevice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/twin"
)

// hook adapts the broker to mochi's hook events.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "iothub" }

func (h *hook) Provides(e byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablished,
		mqtt.OnDisconnect, mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnSubscribed,
		mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnWill, mqtt.OnUnsubscribed,
		mqtt.OnPacketSent, mqtt.OnPacketProcessed,
	}, []byte{e})
}

// OnConnect authenticates before mochi sends CONNACK so that a refusal is
// CONNACK 5 (not authorized), which the SDK reports as UnauthorizedError and
// does not retry, rather than a silent close.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	var s *connState
	var err error
	onFreshStack(func() { s, err = b.authenticate(ctx, cl.ID, pk.Connect.Username, pk.Connect.Password, cl.Net.Conn) })
	if err == nil && pk.Connect.WillFlag {
		err = checkWill(s.id, pk.Connect.WillTopic)
	}
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			b.log.Info("device connection refused", "clientId", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener, "reason", r.reason)
		} else {
			b.log.Error("device authentication failed", "clientId", cl.ID, "error", err)
		}
		// MQTT 3.1.1 has no 0x87; mochi maps 0x86 to its return code 5.
		code := packets.ErrNotAuthorized
		if cl.Properties.ProtocolVersion < 5 {
			code = packets.ErrBadUsernameOrPassword
		}
		_ = b.server.SendConnack(cl, code, false, nil)
		return errNotAuthorized
	}
	if s.token != nil {
		// IoT Hub closes a connection whose token expires; the SDK renews
		// before that by reconnecting.
		d := time.Until(s.token.Expiry)
		s.expiry = time.AfterFunc(d, func() {
			b.closeClient(cl, packets.ErrNotAuthorized, "SAS token expired")
		})
	}
	b.sessions.Store(cl, s)
	return nil
}

// checkWill admits a will only on the identity's own telemetry topic (IoT
// Hub's documented will topic) or a plain topic. mochi publishes a will
// without the checks a device's own publishes pass, so a will on another
// device's cloud-to-device topic or on the twin and method topics every
// device subscribes to would reach other devices.
func checkWill(id identity, topic string) error {
	pt, err := classifyPublish(id, topic)
	if err != nil {
		return refuse("will topic: %v", err)
	}
	if pt.Kind != topicTelemetry && pt.Kind != topicOther {
		return refuse("will topic %q is neither the identity's telemetry nor a plain topic", topic)
	}
	return nil
}

// OnWill turns a will on the identity's telemetry topic into a telemetry
// message, as IoT Hub does; the broker's own fan-out of it reaches nobody,
// since no client may subscribe to telemetry topics.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	b := h.b
	s := h.sessionOf(cl)
	if s == nil {
		return will, nil
	}
	pt, err := classifyPublish(s.id, will.TopicName)
	if err != nil || pt.Kind != topicTelemetry {
		return will, nil
	}
	m, err := telemetryMessage(s, pt.Bag, will.Payload, b.cfg.Now())
	if err != nil {
		b.log.Info("will message dropped", "clientId", cl.ID, "reason", err.Error())
		return will, nil
	}
	if err := b.cfg.Accept(b.ctx, m); err != nil {
		b.log.Error("will message not accepted", "clientId", cl.ID, "error", err)
	}
	return will, nil
}

func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	_, ok := h.b.sessions.Load(cl)
	return ok
}

func (h *hook) sessionOf(cl *mqtt.Client) *connState {
	v, ok := h.b.sessions.Load(cl)
	if !ok {
		return nil
	}
	return v.(*connState)
}

func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	s := h.sessionOf(cl)
	if s == nil {
		return false
	}
	if write {
		// IoT Hub closes a connection that publishes outside its identity's
		// topics whatever the QoS; mochi alone would drop a QoS 0 publish
		// silently and keep the connection.
		pt, err := classifyPublish(s.id, topic)
		switch {
		case err != nil:
			h.b.closeClient(cl, packets.ErrTopicNameInvalid, "malformed topic: "+err.Error())
			return false
		case pt.Kind == topicForbidden:
			h.b.closeClient(cl, packets.ErrNotAuthorized, "publish outside the identity's topics")
			return false
		}
		return true
	}
	return canRead(s.id, topic)
}

func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	s := h.sessionOf(cl)
	if s == nil {
		return
	}
	b.connected.Add(1)
	b.established.Add(1)
	b.log.Info("device connected", "clientId", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener, "auth", s.authMethod, "clean", pk.Connect.Clean)
	onFreshStack(func() {
		if err := b.cfg.Registry.SetConnectionState(b.ctx, s.id.DeviceID, s.id.ModuleID, true); err != nil {
			b.log.Warn("record connection state", "clientId", cl.ID, "error", err)
		}
		if b.cfg.OnConnectionChange != nil {
			b.cfg.OnConnectionChange(s.id.DeviceID, s.id.ModuleID, true)
		}
		b.restoreSession(cl, s, pk.Connect.Clean)
		if s.id.ModuleID == "" {
			// No SUBSCRIBE has been read yet: what is here came with the session.
			s.c2dReady.Store(subscribedUnder(cl, deviceboundPrefix(s.id)))
			b.c2d.sessionStarted(cl, s.id.DeviceID, pk.Connect.Clean)
		}
	})
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	b := h.b
	v, ok := b.sessions.LoadAndDelete(cl)
	if !ok {
		return
	}
	s := v.(*connState)
	s.stop()
	b.connected.Add(-1)
	b.log.Info("device disconnected", "clientId", cl.ID, "reason", fmt.Sprint(err))
	if cl.IsTakenOver() {
		return // the new connection owns the state now
	}
	onFreshStack(func() {
		if err := b.cfg.Registry.SetConnectionState(b.ctx, s.id.DeviceID, s.id.ModuleID, false); err != nil {
			b.log.Warn("record connection state", "clientId", cl.ID, "error", err)
		}
		if b.cfg.OnConnectionChange != nil {
			b.cfg.OnConnectionChange(s.id.DeviceID, s.id.ModuleID, false)
		}
	})
}

// onFreshStack runs fn on a short-lived goroutine and waits for it. The
// connection setup (JSON, SQLite, HMAC) needs tens of KiB of stack; run on the
// connection's own goroutine, that stack would stay with every idle device
// for the life of its connection. A goroutine is about a microsecond; a
// connect costs hundreds.
func onFreshStack(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

// ackedLater hands a publish back to mochi as handled: mochi neither
// forwards it (Ignore) nor acknowledges it (it sees QoS 0); the acker sends the
// PUBACK once the message is durable. ErrRejectPacket would do the same, but
// mochi then boxes the 800-byte packet for a debug log call on every message:
// a tenth of the hub's allocations on a telemetry stream.
func ackedLater(pk packets.Packet) (packets.Packet, error) {
	pk.FixedHeader.Qos = 0
	pk.Ignore = true
	return pk, nil
}

// OnPacketRead closes connections that publish at QoS 2, as IoT Hub does.
// Only ErrRejectPacket ends the connection: mochi ignores other hook errors
// here and would answer the publish.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if pk.FixedHeader.Qos == 2 {
			h.b.closeClient(cl, packets.ErrQosNotSupported, "QoS 2 publish is not supported")
			return pk, packets.ErrRejectPacket
		}
	case packets.Subscribe:
		if pk.SubscribeValidate() == packets.CodeSuccess {
			h.park(cl, pk.PacketID)
		}
	case packets.Unsubscribe:
		if pk.UnsubscribeValidate() == packets.CodeSuccess {
			h.park(cl, pk.PacketID)
		}
	}
	return pk, nil
}

// park steps an outbound PUBLISH aside while the device's SUBSCRIBE or
// UNSUBSCRIBE with the same packet identifier is processed. MQTT keeps the
// two directions' identifiers apart, but mochi looks both up in one in-flight
// map and refuses such a SUBSCRIBE with 0x91 (not even a valid MQTT 3.1.1
// SUBACK code): a device that resubscribes after a clean=false reconnect,
// while a cloud-to-device message is in flight, would lose its subscription.
// The message goes back in OnPacketProcessed, on the same goroutine, before
// the device's next packet (its PUBACK, say) is read; the device's C2D pass
// lock is held meanwhile so that no new message takes the free identifier.
// Only packets that pass mochi's validation are parked: those always reach
// OnPacketProcessed.
func (h *hook) park(cl *mqtt.Client, id uint16) {
	out, ok := cl.State.Inflight.Get(id)
	if !ok || out.FixedHeader.Type != packets.Publish {
		return
	}
	s := h.sessionOf(cl)
	if s == nil {
		return
	}
	p := &parked{pk: out}
	if s.id.ModuleID == "" {
		p.dev = h.b.c2d.device(s.id.DeviceID, true)
		p.dev.deliver.Lock()
	}
	cl.State.Inflight.Delete(id)
	s.parked = p
}

// OnPacketProcessed puts back what park stepped aside.
func (h *hook) OnPacketProcessed(cl *mqtt.Client, _ packets.Packet, _ error) {
	s := h.sessionOf(cl)
	if s == nil || s.parked == nil {
		return
	}
	p := s.parked
	s.parked = nil
	cl.State.Inflight.Set(p.pk)
	if p.dev != nil {
		p.dev.deliver.Unlock()
	}
}

// OnPublish handles IoT Hub topics. It runs before mochi sends the PUBACK, so an
// accepted telemetry message is handed to Accept (durable) first.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	b := h.b
	if cl.Net.Inline {
		return pk, nil
	}
	s := h.sessionOf(cl)
	if s == nil {
		return pk, packets.ErrRejectPacket
	}
	pk.FixedHeader.Retain = false // IoT Hub keeps no retained messages
	pt, err := classifyPublish(s.id, pk.TopicName)
	if err != nil {
		return h.drop(cl, "malformed topic: "+err.Error())
	}
	if len(pk.Payload) > MaxMessageSize {
		return h.drop(cl, fmt.Sprintf("message of %d bytes exceeds %d", len(pk.Payload), MaxMessageSize))
	}
	switch pt.Kind {
	case topicTelemetry:
		m, err := telemetryMessage(s, pt.Bag, pk.Payload, b.cfg.Now())
		if err != nil {
			return h.drop(cl, err.Error())
		}
		if b.cfg.AcceptAsync != nil {
			if s.unacked.Add(1) > maxUnacked {
				s.unacked.Add(-1)
				return h.drop(cl, "too many messages awaiting acknowledgement")
			}
			id := uint16(0)
			if pk.FixedHeader.Qos > 0 {
				id = pk.PacketID
			}
			b.cfg.AcceptAsync(m, b.acks.done(cl, s, id))
			return ackedLater(pk)
		}
		if err := b.cfg.Accept(b.ctx, m); err != nil {
			b.log.Error("telemetry not accepted; closing connection so the device resends", "clientId", cl.ID, "error", err)
			cl.Stop(err)
			return pk, packets.ErrRejectPacket
		}
		return pk, packets.CodeSuccessIgnore
	case topicTwinGet:
		h.twinGet(cl, s, pt.RID)
		return pk, packets.CodeSuccessIgnore
	case topicTwinReported:
		h.twinReported(cl, s, pt.RID, pk.Payload)
		return pk, packets.CodeSuccessIgnore
	case topicMethodResponse:
		if err := b.cfg.Methods.Respond(s.id.DeviceID, s.id.ModuleID, pt.RID, pt.Status, pk.Payload); err != nil {
			b.log.Debug("method response matched no pending call", "clientId", cl.ID, "rid", pt.RID)
		}
		return pk, packets.CodeSuccessIgnore
	case topicOther:
		// A plain topic is delivered to its MQTT subscribers as in any broker,
		// and also logged for routing (MqttTopics routes) before the PUBACK.
		if b.cfg.Accept != nil {
			m := plainTopicMessage(s, pk.TopicName, pk.Payload, b.cfg.Now())
			if err := b.cfg.Accept(b.ctx, m); err != nil {
				b.log.Error("plain-topic message not accepted; closing connection so the client resends", "clientId", cl.ID, "error", err)
				cl.Stop(err)
				return pk, packets.ErrRejectPacket
			}
		}
	}
	return pk, nil
}

func plainTopicMessage(s *connState, topic string, payload []byte, now time.Time) message.Message {
	now = now.UTC()
	sys := map[string]string{
		message.SysConnectionDevice: s.id.DeviceID,
		message.SysMessageSource:    message.SourceMQTTTopics,
		message.SysMQTTTopic:        topic,
		message.SysEnqueuedTime:     now.Format(time.RFC3339Nano),
	}
	if s.id.ModuleID != "" {
		sys[message.SysConnectionModule] = s.id.ModuleID
	}
	return message.Message{Body: bytes.Clone(payload), System: sys, Enqueued: now}
}

// drop closes a connection that sent something IoT Hub would refuse; MQTT 3.1.1
// has no negative acknowledgement.
func (h *hook) drop(cl *mqtt.Client, reason string) (packets.Packet, error) {
	h.b.closeClient(cl, packets.ErrProtocolViolation, reason)
	return packets.Packet{}, packets.ErrRejectPacket
}

// closeClient ends a connection that broke IoT Hub's rules. An MQTT 5 client
// is told why with a DISCONNECT first; MQTT 3.1.1 has no server DISCONNECT, so
// such a client just sees the connection close.
func (b *Broker) closeClient(cl *mqtt.Client, code packets.Code, reason string) {
	b.log.Info("closing connection", "clientId", cl.ID, "reason", reason)
	if cl.Properties.ProtocolVersion >= 5 {
		_ = b.server.DisconnectClient(cl, code)
	}
	cl.Stop(fmt.Errorf("%s: %s", code.Reason, reason))
}

func telemetryMessage(s *connState, bag string, payload []byte, now time.Time) (message.Message, error) {
	sys, app, err := message.DecodeBag(bag)
	if err != nil {
		return message.Message{}, fmt.Errorf("bad property bag: %w", err)
	}
	if sys == nil {
		sys = make(map[string]string, 4)
	}
	sys[message.SysConnectionDevice] = s.id.DeviceID
	if s.id.ModuleID != "" {
		sys[message.SysConnectionModule] = s.id.ModuleID
	}
	sys[message.SysConnectionAuth] = s.authMethod
	sys[message.SysConnectionAuthGen] = s.genID
	now = now.UTC()
	sys[message.SysEnqueuedTime] = now.Format(time.RFC3339Nano)
	// IoT Hub stamps device messages with their source, as it does events.
	sys[message.SysMessageSource] = message.SourceTelemetry
	return message.Message{Body: bytes.Clone(payload), System: sys, Properties: app, Enqueued: now}, nil
}

func (h *hook) twinGet(cl *mqtt.Client, s *connState, rid string) {
	b := h.b
	tw, err := b.cfg.Registry.GetTwin(b.ctx, s.id.DeviceID, s.id.ModuleID)
	if err != nil {
		h.twinError(cl, rid, err)
		return
	}
	body, err := json.Marshal(map[string]any{"desired": tw.Properties.Desired, "reported": tw.Properties.Reported})
	if err != nil {
		h.twinError(cl, rid, err)
		return
	}
	_ = publishDirect(cl, "$iothub/twin/res/200/?$rid="+rid, body)
}

func (h *hook) twinReported(cl *mqtt.Client, s *connState, rid string, body []byte) {
	b := h.b
	v, err := b.cfg.Registry.UpdateReported(b.ctx, s.id.DeviceID, s.id.ModuleID, body)
	if err != nil {
		h.twinError(cl, rid, err)
		return
	}
	_ = publishDirect(cl, fmt.Sprintf("$iothub/twin/res/204/?$rid=%s&$version=%d", rid, v), nil)
}

func (h *hook) twinError(cl *mqtt.Client, rid string, err error) {
	e := errcode.From(err)
	if e.Code == errcode.ServerError {
		h.b.log.Error("twin operation failed", "clientId", cl.ID, "error", err)
	}
	status, number := e.Code.Status, e.Code.Number
	if twin.IsTooLarge(err) {
		// Over MQTT IoT Hub answers an oversize twin with 413.
		status, number = errcode.MessageTooLarge.Status, errcode.MessageTooLarge.Number
	}
	body, _ := json.Marshal(map[string]any{"errorCode": number, "message": e.Message})
	_ = publishDirect(cl, fmt.Sprintf("$iothub/twin/res/%d/?$rid=%s", status, rid), body)
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	s := h.sessionOf(cl)
	if s == nil {
		return
	}
	h.b.saveSession(cl)
	if s.id.ModuleID != "" {
		return
	}
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 && canRead(s.id, f.Filter) && len(f.Filter) > len("devices/") && f.Filter[:len("devices/")] == "devices/" {
			// mochi writes the SUBACK after this hook; delivery starts
			// once it is written (OnPacketSent).
			s.c2dSuback.Store(true)
			return
		}
	}
}

// OnPacketSent starts cloud-to-device delivery once the SUBACK granting a
// devicebound subscription is written: a message sent earlier could reach the
// device before the SUBACK, which strict clients take as a protocol error.
func (h *hook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Suback {
		return
	}
	s := h.sessionOf(cl)
	if s == nil || !s.c2dSuback.Swap(false) {
		return
	}
	s.c2dReady.Store(true)
	h.b.c2d.kick(s.id.DeviceID)
}

func (h *hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	h.b.c2d.onQosPublish(cl, pk)
}

func (h *hook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	h.b.c2d.onQosComplete(cl, pk)
}

func (h *hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.c2d.onQosDropped(cl, pk)
}

func (h *hook) OnUnsubscribed(cl *mqtt.Client, _ packets.Packet) {
	if h.sessionOf(cl) != nil {
		h.b.saveSession(cl)
	}
}
