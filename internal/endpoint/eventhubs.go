package endpoint

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// EventHubConfig routes to an Azure Event Hub through its namespace's Kafka
// endpoint, with IoT Hub's property names (RoutingEventHubProperties).
//
//	eventHubs:
//	- name: telemetry-hub
//	  connectionString: "Endpoint=sb://plant.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=...;EntityPath=telemetry"
type EventHubConfig struct {
	Name string `json:"name"`
	// ConnectionString is a namespace or event hub connection string; it is
	// a secret and never logged.
	ConnectionString string `json:"connectionString,omitempty"`
	// EndpointURI is "sb://<namespace>.servicebus.windows.net"; with keyBased
	// authentication it may be left out, and must agree with the connection
	// string when given.
	EndpointURI string `json:"endpointUri,omitempty"`
	// EntityPath is the event hub; it may come from the connection string's
	// EntityPath instead, and must agree with it when both are given.
	EntityPath string `json:"entityPath,omitempty"`
	// AuthenticationType is keyBased (default) or identityBased.
	AuthenticationType string            `json:"authenticationType,omitempty"`
	Identity           *EventHubIdentity `json:"identity,omitempty"`
}

// EventHubIdentity is IoT Hub's managed identity choice for identityBased
// authentication; empty means the system-assigned identity.
type EventHubIdentity struct {
	UserAssignedIdentity string `json:"userAssignedIdentity,omitempty"`
}

// IoT Hub's authenticationType values.
const (
	KeyBased      = "keyBased"
	IdentityBased = "identityBased"
)

// eventHubsKafkaPort is where every Event Hubs namespace serves Kafka
// (always TLS).
const eventHubsKafkaPort = "9093"

// LogValue keeps the connection string out of logs.
func (c EventHubConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", c.Name), slog.String("endpointUri", c.EndpointURI),
		slog.String("entityPath", c.EntityPath), slog.String("authenticationType", c.AuthenticationType))
}

// EventHubConnectionString is a parsed Event Hubs (Service Bus) connection
// string: Endpoint=sb://<ns>.servicebus.windows.net/;SharedAccessKeyName=…;
// SharedAccessKey=…[;EntityPath=<hub>], or SharedAccessSignature=… in place
// of the key pair. Keys are matched case-insensitively, as the Azure SDKs do;
// keys it does not know are ignored.
type EventHubConnectionString struct {
	// Host is the namespace's host name from Endpoint, without a port.
	Host                string
	SharedAccessKeyName string
	// SharedAccessKey and SharedAccessSignature are secrets.
	SharedAccessKey       string
	SharedAccessSignature string
	EntityPath            string
}

// LogValue keeps the key and signature out of logs.
func (c EventHubConnectionString) LogValue() slog.Value {
	return slog.GroupValue(slog.String("host", c.Host), slog.String("sharedAccessKeyName", c.SharedAccessKeyName),
		slog.String("entityPath", c.EntityPath))
}

// ParseEventHubConnectionString parses s. Its errors never quote the key or
// the signature.
func ParseEventHubConnectionString(s string) (EventHubConnectionString, error) {
	var c EventHubConnectionString
	seen := map[string]bool{}
	var endpoint string
	for i, seg := range strings.Split(s, ";") {
		if strings.TrimSpace(seg) == "" {
			continue // "a=b;;c=d" and a trailing ';' are common
		}
		k, v, ok := strings.Cut(seg, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return EventHubConnectionString{}, fmt.Errorf("connection string: part %d is not Key=Value", i+1)
		}
		lk := strings.ToLower(k)
		var dst *string
		switch lk {
		case "endpoint":
			dst = &endpoint
		case "sharedaccesskeyname":
			dst = &c.SharedAccessKeyName
		case "sharedaccesskey":
			dst = &c.SharedAccessKey
		case "sharedaccesssignature":
			dst = &c.SharedAccessSignature
		case "entitypath":
			dst = &c.EntityPath
		case "usedevelopmentemulator":
			if strings.EqualFold(v, "true") {
				return EventHubConnectionString{}, fmt.Errorf("connection string: UseDevelopmentEmulator is not supported here; reach the emulator's Kafka port with a kafka endpoint")
			}
			continue
		default:
			continue
		}
		if seen[lk] {
			return EventHubConnectionString{}, fmt.Errorf("connection string: %s is given twice", k)
		}
		seen[lk] = true
		if v == "" {
			return EventHubConnectionString{}, fmt.Errorf("connection string: %s is empty", k)
		}
		*dst = v
	}
	if endpoint == "" {
		return EventHubConnectionString{}, fmt.Errorf("connection string: Endpoint is missing")
	}
	host, err := namespaceHost(endpoint)
	if err != nil {
		return EventHubConnectionString{}, fmt.Errorf("connection string: Endpoint: %w", err)
	}
	c.Host = host
	switch {
	case c.SharedAccessSignature != "" && (c.SharedAccessKey != "" || c.SharedAccessKeyName != ""):
		return EventHubConnectionString{}, fmt.Errorf("connection string: has both SharedAccessSignature and SharedAccessKeyName/SharedAccessKey")
	case c.SharedAccessSignature != "":
	case c.SharedAccessKeyName == "" && c.SharedAccessKey == "":
		return EventHubConnectionString{}, fmt.Errorf("connection string: SharedAccessKeyName and SharedAccessKey (or SharedAccessSignature) are missing")
	case c.SharedAccessKeyName == "":
		return EventHubConnectionString{}, fmt.Errorf("connection string: SharedAccessKeyName is missing")
	case c.SharedAccessKey == "":
		return EventHubConnectionString{}, fmt.Errorf("connection string: SharedAccessKey is missing")
	}
	return c, nil
}

// namespaceHost returns the host of an "sb://host[:port][/]" endpoint. The
// port is dropped: the Kafka endpoint has its own.
func namespaceHost(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", errors.New("is not a URL") // unquoted: it might hold a secret
	}
	shown := u.Redacted()
	if !strings.EqualFold(u.Scheme, "sb") {
		return "", fmt.Errorf("%q must start with sb://", shown)
	}
	host := u.Hostname()
	if host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", fmt.Errorf("%q must be sb://<namespace host>/", shown)
	}
	if strings.ContainsAny(host, " %") {
		return "", fmt.Errorf("%q has no valid host", shown)
	}
	return strings.ToLower(host), nil
}

// eventHub is an eventHubs endpoint resolved to what its Kafka client needs.
type eventHub struct {
	host, topic string
	auth        kafkaAuth
}

// resolve checks c and resolves it, collecting every problem.
func (c EventHubConfig) resolve() (eventHub, []*KafkaConfigError) {
	var out []*KafkaConfigError
	bad := func(field, format string, args ...any) {
		out = append(out, &KafkaConfigError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	var eh eventHub
	switch {
	case strings.EqualFold(c.AuthenticationType, IdentityBased):
		bad("authenticationType", "identityBased is not available yet; use keyBased with a connectionString")
		return eh, out
	case c.AuthenticationType != "" && !strings.EqualFold(c.AuthenticationType, KeyBased):
		bad("authenticationType", "%q is not keyBased or identityBased", c.AuthenticationType)
		return eh, out
	}
	if c.Identity != nil {
		bad("identity", "is used only with authenticationType identityBased")
	}
	if c.ConnectionString == "" {
		bad("connectionString", "is required with keyBased authentication")
		return eh, out
	}
	cs, err := ParseEventHubConnectionString(c.ConnectionString)
	if err != nil {
		bad("connectionString", "%s", strings.TrimPrefix(err.Error(), "connection string: "))
		return eh, out
	}
	eh.host = cs.Host
	if c.EndpointURI != "" {
		h, err := namespaceHost(c.EndpointURI)
		switch {
		case err != nil:
			bad("endpointUri", "%v", err)
		case h != cs.Host:
			bad("endpointUri", "%q does not match the connection string's Endpoint (%s)", c.EndpointURI, cs.Host)
		}
	}
	eh.topic = c.EntityPath
	if cs.EntityPath != "" {
		// The connection string's spelling: its key may be scoped to it.
		eh.topic = cs.EntityPath
	}
	switch {
	case c.EntityPath != "" && cs.EntityPath != "" && !strings.EqualFold(c.EntityPath, cs.EntityPath):
		bad("entityPath", "%q does not match the connection string's EntityPath %q", c.EntityPath, cs.EntityPath)
	case eh.topic == "":
		bad("entityPath", "is required (or EntityPath in the connection string)")
	default:
		if msg := topicProblem(eh.topic); msg != "" {
			bad("entityPath", "%s", msg)
		}
	}
	eh.auth = eventHubsAuth(c)
	return eh, out
}

// eventHubsAuth chooses how to log in to the namespace; resolve has already
// turned away what is not supported. Event Hubs takes SASL PLAIN with user
// "$ConnectionString" and the whole connection string as the password.
// identityBased will be OAUTHBEARER with an Entra token for the namespace,
// resolved here and turned into a mechanism in kafkaAuth.saslMechanism.
func eventHubsAuth(c EventHubConfig) kafkaAuth {
	return kafkaAuth{mechanism: saslPlain, user: "$ConnectionString", pass: c.ConnectionString}
}

// Problems lists everything wrong with c except its name (which the config
// package checks across all endpoints).
func (c EventHubConfig) Problems() []*KafkaConfigError {
	_, ps := c.resolve()
	return ps
}

// eventHubsDial overrides where an eventHubs sink connects; only tests set it,
// to point a real Event Hubs configuration at a local Kafka.
type eventHubsDial struct {
	seeds           []string
	rootCAs         *x509.CertPool
	deliveryTimeout time.Duration
}

// NewEventHubs returns a sink that produces to the event hub through the
// namespace's Kafka endpoint (<namespace>:9093, TLS, SASL); it connects on
// first use.
func NewEventHubs(cfg EventHubConfig) (*Kafka, error) {
	return newEventHubs(cfg, eventHubsDial{})
}

func newEventHubs(cfg EventHubConfig, dial eventHubsDial) (*Kafka, error) {
	const kind = "eventHubs endpoint"
	eh, ps := cfg.resolve()
	if err := problemsError(kind, cfg.Name, ps); err != nil {
		return nil, err
	}
	s := kafkaSettings{
		kind: kind, name: cfg.Name,
		seeds: []string{net.JoinHostPort(eh.host, eventHubsKafkaPort)},
		topic: eh.topic,
		tls:   &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: dial.rootCAs},
		auth:  eh.auth,
		// Event Hubs takes gzip only on some tiers; uncompressed works on all.
		codec: kgo.NoCompression(),
		extra: []kgo.Opt{
			// Microsoft's recommended producer settings for Event Hubs: a
			// request under its 1 MB limit, metadata refreshed every 3 min.
			kgo.ProducerBatchMaxBytes(1_000_000),
			kgo.MetadataMaxAge(3 * time.Minute),
		},
		deliveryTimeout: dial.deliveryTimeout,
	}
	if len(dial.seeds) > 0 {
		s.seeds = dial.seeds
	}
	return newKafkaSink(s)
}
