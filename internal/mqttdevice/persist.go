package mqttdevice

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-iot/moat/internal/session"
)

// restoreSession gives a clean=false connection the subscriptions its session
// had before the hub restarted. mochi keeps sessions only in memory; when it
// inherited one, there is nothing to restore.
func (b *Broker) restoreSession(cl *mqtt.Client, s *connState, clean bool) {
	st := b.cfg.Sessions
	if st == nil {
		return
	}
	if clean {
		if err := st.Delete(b.ctx, cl.ID); err != nil {
			b.log.Warn("forget session", "clientId", cl.ID, "error", err)
		}
		return
	}
	if cl.State.Subscriptions.Len() > 0 {
		return
	}
	subs, err := st.Load(b.ctx, cl.ID)
	if err != nil {
		b.log.Warn("restore session", "clientId", cl.ID, "error", err)
		return
	}
	for _, sub := range subs {
		if !canRead(s.id, sub.Filter) {
			continue // the rules changed since it subscribed
		}
		ps := packets.Subscription{Filter: sub.Filter, Qos: sub.QoS}
		b.server.Topics.Subscribe(cl.ID, ps)
		cl.State.Subscriptions.Add(sub.Filter, ps)
	}
	if len(subs) > 0 {
		b.log.Info("restored persistent session", "clientId", cl.ID, "subscriptions", len(subs))
	}
}

// saveSession records a persistent session's subscriptions.
func (b *Broker) saveSession(cl *mqtt.Client) {
	st := b.cfg.Sessions
	if st == nil || cl.Properties.Clean {
		return
	}
	all := cl.State.Subscriptions.GetAll()
	subs := make([]session.Subscription, 0, len(all))
	for f, sub := range all {
		subs = append(subs, session.Subscription{Filter: f, QoS: sub.Qos})
	}
	if err := st.Save(b.ctx, cl.ID, subs); err != nil {
		b.log.Warn("save session", "clientId", cl.ID, "error", err)
	}
}
