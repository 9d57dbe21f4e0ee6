package mqttdevice

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/registry"
)

// SendMethod implements methods.Transport.
func (b *Broker) SendMethod(deviceID, moduleID, name, rid string, payload []byte) error {
	id := identity{DeviceID: deviceID, ModuleID: moduleID}
	cl, _, ok := b.client(id)
	if !ok || !subscribedUnder(cl, "$iothub/methods/POST/") {
		return errcode.New(errcode.DeviceNotOnline, "the operation failed because the requested device isn't online or hasn't registered the direct method callback")
	}
	if err := publishDirect(cl, "$iothub/methods/POST/"+name+"/?$rid="+rid, payload); err != nil {
		return errcode.Wrap(errcode.DeviceNotOnline, err, "device %s went offline", id.clientID())
	}
	return nil
}

// DesiredChanged pushes a desired-properties patch to a connected identity
// subscribed to desired updates (registry.Options.OnDesiredChange).
func (b *Broker) DesiredChanged(deviceID, moduleID string, version int64, patch map[string]any) {
	cl, _, ok := b.client(identity{DeviceID: deviceID, ModuleID: moduleID})
	if !ok || !subscribedUnder(cl, "$iothub/twin/PATCH/properties/desired/") {
		return
	}
	body, err := json.Marshal(patch)
	if err != nil {
		b.log.Error("encode desired patch", "error", err)
		return
	}
	if err := publishDirect(cl, fmt.Sprintf("$iothub/twin/PATCH/properties/desired/?$version=%d", version), body); err != nil {
		b.log.Debug("desired patch not sent", "clientId", cl.ID, "error", err)
	}
}

// IdentityChanged re-checks live connections of an identity (and, for a device,
// of its modules) after a registry change, and disconnects those that are no
// longer allowed: deleted, disabled, or whose token the new keys do not verify
// (registry.Options.OnIdentityChange).
func (b *Broker) IdentityChanged(deviceID, moduleID string) {
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	for _, cl := range b.server.Clients.GetAll() {
		if cl.Closed() || cl.Net.Inline {
			continue
		}
		if cl.ID != deviceID && !strings.HasPrefix(cl.ID, deviceID+"/") {
			continue
		}
		v, ok := b.sessions.Load(cl)
		if !ok {
			continue
		}
		s := v.(*connState)
		if moduleID != "" && s.id.ModuleID != moduleID {
			continue
		}
		if reason := b.stillAllowed(ctx, s); reason != "" {
			b.closeClient(cl, packets.ErrNotAuthorized, "identity changed: "+reason)
		}
	}
}

func (b *Broker) stillAllowed(ctx context.Context, s *connState) string {
	dev, err := b.cfg.Registry.GetDevice(ctx, s.id.DeviceID)
	if err != nil {
		return "device gone"
	}
	if dev.Status != registry.StatusEnabled {
		return "device disabled"
	}
	auth, gen := dev.Authentication, dev.GenerationID
	if s.id.ModuleID != "" {
		mod, err := b.cfg.Registry.GetModule(ctx, s.id.DeviceID, s.id.ModuleID)
		if err != nil {
			return "module gone"
		}
		auth, gen = mod.Authentication, mod.GenerationID
	}
	if gen != s.genID {
		return "identity re-created"
	}
	if s.token != nil {
		if err := b.verifyToken(*s.token, s.id, auth); err != nil {
			return "credentials changed"
		}
	}
	return ""
}
