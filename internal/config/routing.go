package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/routing"
)

// Endpoint types as the management API and CLI name them; each is one list
// of properties.routing.endpoints.
const (
	EndpointWebhook          = "webhook"
	EndpointMQTTBridge       = "mqttBridge"
	EndpointNATS             = "nats"
	EndpointEventHub         = "eventHub"
	EndpointKafka            = "kafka"
	EndpointStorageContainer = "storageContainer"
)

// EndpointTypes lists the custom endpoint types.
var EndpointTypes = []string{EndpointWebhook, EndpointMQTTBridge, EndpointNATS, EndpointEventHub, EndpointKafka, EndpointStorageContainer}

// NamedEndpoint is one custom endpoint: its type and its settings, a value of
// the endpoint package's config type for that kind.
type NamedEndpoint struct {
	Name     string
	Type     string
	Settings any
}

// CustomEndpoints lists every custom endpoint in the configuration's order.
func (r Routing) CustomEndpoints() []NamedEndpoint {
	var out []NamedEndpoint
	for _, e := range r.Endpoints.WebHooks {
		out = append(out, NamedEndpoint{e.Name, EndpointWebhook, e})
	}
	for _, e := range r.Endpoints.MQTTBridges {
		out = append(out, NamedEndpoint{e.Name, EndpointMQTTBridge, e})
	}
	for _, e := range r.Endpoints.NATS {
		out = append(out, NamedEndpoint{e.Name, EndpointNATS, e})
	}
	for _, e := range r.Endpoints.EventHubs {
		out = append(out, NamedEndpoint{e.Name, EndpointEventHub, e})
	}
	for _, e := range r.Endpoints.Kafka {
		out = append(out, NamedEndpoint{e.Name, EndpointKafka, e})
	}
	for _, e := range r.Endpoints.StorageContainers {
		out = append(out, NamedEndpoint{e.Name, EndpointStorageContainer, e})
	}
	return out
}

// Endpoint finds a custom endpoint by name (case-insensitively, as names are
// unique that way).
func (r Routing) Endpoint(name string) (NamedEndpoint, bool) {
	for _, e := range r.CustomEndpoints() {
		if strings.EqualFold(e.Name, name) {
			return e, true
		}
	}
	return NamedEndpoint{}, false
}

// Clone returns a deep copy, for building a changed configuration while the
// current one stays in use.
func (r Routing) Clone() Routing {
	b, err := json.Marshal(r)
	if err != nil {
		panic(fmt.Sprintf("config: routing does not encode: %v", err)) // plain data; cannot happen
	}
	var out Routing
	if err := json.Unmarshal(b, &out); err != nil {
		panic(fmt.Sprintf("config: routing does not decode: %v", err))
	}
	return out
}

// SetEndpoint adds the endpoint named name of type typ, or replaces it. The
// settings are the type's JSON properties (unknown fields are errors); their
// name, if given, must be name. An endpoint cannot change type: delete it and
// create it again.
func (r *Routing) SetEndpoint(typ, name string, settings json.RawMessage) error {
	if old, ok := r.Endpoint(name); ok && old.Type != typ {
		return fmt.Errorf("endpoint %q is a %s endpoint; delete it to create a %s endpoint of that name", old.Name, old.Type, typ)
	}
	if len(bytes.TrimSpace(settings)) == 0 {
		settings = json.RawMessage("{}")
	}
	r.RemoveEndpoint(name)
	var err error
	switch typ {
	case EndpointWebhook:
		r.Endpoints.WebHooks, err = appendEndpoint(r.Endpoints.WebHooks, name, settings, func(e *endpoint.WebhookConfig) *string { return &e.Name })
	case EndpointMQTTBridge:
		r.Endpoints.MQTTBridges, err = appendEndpoint(r.Endpoints.MQTTBridges, name, settings, func(e *endpoint.MQTTBridgeConfig) *string { return &e.Name })
	case EndpointNATS:
		r.Endpoints.NATS, err = appendEndpoint(r.Endpoints.NATS, name, settings, func(e *endpoint.NATSConfig) *string { return &e.Name })
	case EndpointEventHub:
		r.Endpoints.EventHubs, err = appendEndpoint(r.Endpoints.EventHubs, name, settings, func(e *endpoint.EventHubConfig) *string { return &e.Name })
	case EndpointKafka:
		r.Endpoints.Kafka, err = appendEndpoint(r.Endpoints.Kafka, name, settings, func(e *endpoint.KafkaConfig) *string { return &e.Name })
	case EndpointStorageContainer:
		r.Endpoints.StorageContainers, err = appendEndpoint(r.Endpoints.StorageContainers, name, settings, func(e *endpoint.StorageContainerConfig) *string { return &e.Name })
	default:
		return fmt.Errorf("unknown endpoint type %q (want one of %s)", typ, strings.Join(EndpointTypes, ", "))
	}
	return err
}

func appendEndpoint[T any](list []T, name string, settings json.RawMessage, nameOf func(*T) *string) ([]T, error) {
	var e T
	d := json.NewDecoder(bytes.NewReader(settings))
	d.DisallowUnknownFields()
	if err := d.Decode(&e); err != nil {
		return list, fmt.Errorf("endpoint %q properties: %w", name, err)
	}
	if n := nameOf(&e); *n != "" && *n != name {
		return list, fmt.Errorf("endpoint properties name %q differs from the endpoint name %q", *n, name)
	}
	*nameOf(&e) = name
	return append(list, e), nil
}

// RemoveEndpoint deletes a custom endpoint by name and says whether it was
// there.
func (r *Routing) RemoveEndpoint(name string) bool {
	n := 0
	drop := func(e string) bool {
		if strings.EqualFold(e, name) {
			n++
			return true
		}
		return false
	}
	eps := &r.Endpoints
	eps.WebHooks = slices.DeleteFunc(eps.WebHooks, func(e endpoint.WebhookConfig) bool { return drop(e.Name) })
	eps.MQTTBridges = slices.DeleteFunc(eps.MQTTBridges, func(e endpoint.MQTTBridgeConfig) bool { return drop(e.Name) })
	eps.NATS = slices.DeleteFunc(eps.NATS, func(e endpoint.NATSConfig) bool { return drop(e.Name) })
	eps.EventHubs = slices.DeleteFunc(eps.EventHubs, func(e endpoint.EventHubConfig) bool { return drop(e.Name) })
	eps.Kafka = slices.DeleteFunc(eps.Kafka, func(e endpoint.KafkaConfig) bool { return drop(e.Name) })
	eps.StorageContainers = slices.DeleteFunc(eps.StorageContainers, func(e endpoint.StorageContainerConfig) bool { return drop(e.Name) })
	return n > 0
}

// References names what refers to an endpoint: routes, the fallback route
// and enrichments, as "route X", "fallback route X" and "enrichment K".
func (r Routing) References(name string) []string {
	var out []string
	for _, rt := range r.Routes {
		if slices.Contains(rt.EndpointNames, name) {
			out = append(out, "route "+rt.Name)
		}
	}
	if fb := r.FallbackRoute; fb != nil && slices.Contains(fb.EndpointNames, name) {
		out = append(out, "fallback route "+fb.Name)
	}
	for _, e := range r.Enrichments {
		if slices.Contains(e.EndpointNames, name) {
			out = append(out, "enrichment "+e.Key)
		}
	}
	return out
}

// Route finds a route by name.
func (r Routing) Route(name string) (routing.Route, bool) {
	for _, rt := range r.Routes {
		if rt.Name == name {
			return rt, true
		}
	}
	return routing.Route{}, false
}

// LoadRouting reads a routing file written by SaveRouting.
func LoadRouting(path string) (Routing, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Routing{}, err
	}
	var r Routing
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&r); err != nil {
		return Routing{}, fmt.Errorf("routing file %s: %w", path, err)
	}
	if err := r.Validate(); err != nil {
		return Routing{}, fmt.Errorf("routing file %s: %w", path, err)
	}
	return r, nil
}

// SaveRouting writes the routing configuration atomically, readable by the
// owner only: endpoint settings hold credentials.
func SaveRouting(path string, r Routing) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode routing: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".routing-*.json")
	if err != nil {
		return fmt.Errorf("save routing: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("save routing: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save routing: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // the rename itself must survive a crash
		d.Close()
	}
	return nil
}
