// Package config is Moat's one declarative file. Its shape follows IoT Hub's
// resource properties (properties.authorizationPolicies, minTlsVersion,
// cloudToDevice, …) so Azure users recognise it; what IoT Hub has no word for
// (listen addresses, the data directory) lives under "moat". The file may be
// YAML or JSON; unknown fields are errors, and every validation error names the
// field path.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/moat-iot/moat/internal/dnszone"
	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/netpolicy"
	"github.com/moat-iot/moat/internal/routing"
	"github.com/moat-iot/moat/internal/sas"
)

// Config is the whole file.
type Config struct {
	// Name is the hub's name ($iothubname); defaults to the first label of the
	// host name.
	Name       string     `json:"name,omitempty"`
	Properties Properties `json:"properties"`
	Moat       Moat       `json:"moat"`
}

// Properties mirrors IoT Hub's resource properties that Moat implements.
type Properties struct {
	// HostName is the name devices and services connect to; it is also the
	// SAS token audience.
	HostName string `json:"hostName,omitempty"`
	// AuthorizationPolicies replaces the generated default policies when given.
	AuthorizationPolicies []sas.Policy `json:"authorizationPolicies,omitempty"`
	// MinTLSVersion is "1.2" (default) or "1.3".
	MinTLSVersion string `json:"minTlsVersion,omitempty"`
	// PublicNetworkAccess, NetworkRuleSets, IPFilterRules and
	// PrivateEndpointConnections are IoT Hub's network properties (see
	// package netpolicy). They seed the data directory's network.json on
	// first start; after that the live policy there wins.
	PublicNetworkAccess        string                                `json:"publicNetworkAccess,omitempty"`
	NetworkRuleSets            *netpolicy.NetworkRuleSets            `json:"networkRuleSets,omitempty"`
	IPFilterRules              []netpolicy.IPFilterRule              `json:"ipFilterRules,omitempty"`
	PrivateEndpointConnections []netpolicy.PrivateEndpointConnection `json:"privateEndpointConnections,omitempty"`
	// Routing is IoT Hub's routing: endpoints, routes, fallback, enrichments.
	Routing Routing `json:"routing"`
}

// Routing mirrors IoT Hub's properties.routing.
type Routing struct {
	Endpoints     RoutingEndpoints     `json:"endpoints"`
	Routes        []routing.Route      `json:"routes,omitempty"`
	FallbackRoute *routing.Route       `json:"fallbackRoute,omitempty"`
	Enrichments   []routing.Enrichment `json:"enrichments,omitempty"`
}

// RoutingEndpoints lists custom endpoints by kind. (IoT Hub has storage
// containers, Event Hubs, Service Bus; Moat adds webhooks, with the others to
// follow.)
type RoutingEndpoints struct {
	WebHooks    []endpoint.WebhookConfig    `json:"webHooks,omitempty"`
	MQTTBridges []endpoint.MQTTBridgeConfig `json:"mqttBridges,omitempty"`
	NATS        []endpoint.NATSConfig       `json:"nats,omitempty"`
	EventHubs   []endpoint.EventHubConfig   `json:"eventHubs,omitempty"`
	Kafka       []endpoint.KafkaConfig      `json:"kafka,omitempty"`
	// StorageContainers are IoT Hub's storage container endpoints (blobs).
	StorageContainers []endpoint.StorageContainerConfig `json:"storageContainers,omitempty"`
}

// EndpointNames lists every custom endpoint's name.
func (r Routing) EndpointNames() []string {
	var out []string
	for _, e := range r.CustomEndpoints() {
		out = append(out, e.Name)
	}
	return out
}

// Moat holds settings IoT Hub does not have.
type Moat struct {
	DataDir   string    `json:"dataDir,omitempty"`
	Listeners Listeners `json:"listeners"`
	// CertificateNames are extra DNS names and IP addresses for the server
	// certificate.
	CertificateNames []string `json:"certificateNames,omitempty"`
	LogLevel         string   `json:"logLevel,omitempty"`
	// Profiling serves Go's pprof profiles under /debug/pprof/ on the
	// metrics listener, for measuring the hub under load. Default off.
	Profiling bool `json:"profiling,omitempty"`
	// AllowLoopbackAdministration admits connections from the hub's own host
	// (local and remote address both loopback) whatever the network policy
	// says, so that `moat` commands and metrics scrapers on the host keep
	// working under publicNetworkAccess Disabled. Default true.
	AllowLoopbackAdministration *bool `json:"allowLoopbackAdministration,omitempty"`
	// DNS is the built-in private DNS server (off unless dns.listen is set).
	DNS dnszone.Config `json:"dns"`
	// Routing holds delivery settings IoT Hub fixes.
	Routing MoatRouting `json:"routing"`
}

// MoatRouting tunes endpoint delivery.
type MoatRouting struct {
	// RetryPeriod is how long an endpoint retries a message before it goes
	// to the endpoint's dead letters (Go duration, default "1h" like IoT
	// Hub, which does not let it be changed).
	RetryPeriod string `json:"retryPeriod,omitempty"`
	// ConnectionStateSnapshot is how often connection state events are
	// published (Go duration, default "60s"): like IoT Hub, each device or
	// module whose state changed since the last snapshot gets one event with
	// its current state and the sequence number of its latest change. "0s"
	// publishes every change as it happens.
	ConnectionStateSnapshot string `json:"connectionStateSnapshot,omitempty"`
}

// RetryPeriodDuration returns the retry period, 0 for the endpoint package's
// default (IoT Hub's hour).
func (m MoatRouting) RetryPeriodDuration() (time.Duration, error) {
	if m.RetryPeriod == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(m.RetryPeriod)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration (such as 1h, 10m or 90s)", m.RetryPeriod)
	}
	return d, nil
}

// DefaultConnectionStateSnapshot is IoT Hub's snapshot period.
const DefaultConnectionStateSnapshot = time.Minute

// ConnectionStateSnapshotPeriod returns the snapshot period (0: every change).
func (m MoatRouting) ConnectionStateSnapshotPeriod() (time.Duration, error) {
	if m.ConnectionStateSnapshot == "" {
		return DefaultConnectionStateSnapshot, nil
	}
	d, err := time.ParseDuration(m.ConnectionStateSnapshot)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration of 0s or more (such as 60s)", m.ConnectionStateSnapshot)
	}
	return d, nil
}

// NetworkPolicy assembles the network properties for package netpolicy.
func (p Properties) NetworkPolicy() netpolicy.Policy {
	return netpolicy.Policy{
		PublicNetworkAccess:        p.PublicNetworkAccess,
		NetworkRuleSets:            p.NetworkRuleSets,
		IPFilterRules:              p.IPFilterRules,
		PrivateEndpointConnections: p.PrivateEndpointConnections,
		MinTLSVersion:              p.MinTLSVersion,
	}.Clone()
}

// LoopbackAdministration is AllowLoopbackAdministration with its default.
func (m Moat) LoopbackAdministration() bool {
	return m.AllowLoopbackAdministration == nil || *m.AllowLoopbackAdministration
}

// Listeners are listen addresses; "" disables one.
type Listeners struct {
	MQTT      *string `json:"mqtt,omitempty"`      // MQTT over TLS, default ":8883"
	HTTPS     *string `json:"https,omitempty"`     // REST + MQTT over WebSockets, default ":443"
	MQTTPlain *string `json:"mqttPlain,omitempty"` // plain MQTT, default off
	Metrics   *string `json:"metrics,omitempty"`   // Prometheus /metrics, default "127.0.0.1:9090"
}

// Defaults.
const (
	DefaultDataDir  = "./moat-data"
	DefaultHostName = "localhost"
	DefaultMQTT     = ":8883"
	DefaultHTTPS    = ":443"
	DefaultMetrics  = "127.0.0.1:9090"
)

// Load reads and validates a config file.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML or JSON and validates it.
func Parse(b []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Default returns the configuration used without a file.
func Default() *Config { return &Config{} }

// FieldError is a validation error at a field path.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// Validate checks every field and returns all problems joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	p := c.Properties
	if p.HostName != "" && !validHostName(p.HostName) {
		bad("properties.hostName", "%q is not a host name or IP address (no port, no scheme)", p.HostName)
	}
	// minTlsVersion is checked with the rest of the network policy.
	np := p.NetworkPolicy()
	for _, err := range unjoin(np.Validate()) {
		var fe *netpolicy.FieldError
		if errors.As(err, &fe) {
			bad("properties."+fe.Path, "%s", fe.Msg)
		} else {
			bad("properties", "%v", err)
		}
	}
	if _, err := c.Moat.Routing.ConnectionStateSnapshotPeriod(); err != nil {
		bad("moat.routing.connectionStateSnapshot", "%v", err)
	}
	if _, err := c.Moat.Routing.RetryPeriodDuration(); err != nil {
		bad("moat.routing.retryPeriod", "%v", err)
	}
	seen := map[string]bool{}
	for i, pol := range p.AuthorizationPolicies {
		path := fmt.Sprintf("properties.authorizationPolicies[%d]", i)
		if pol.KeyName == "" || len(pol.KeyName) > 64 {
			bad(path+".keyName", "must be 1 to 64 characters")
		}
		if seen[pol.KeyName] {
			bad(path+".keyName", "duplicate policy %q", pol.KeyName)
		}
		seen[pol.KeyName] = true
		if pol.PrimaryKey == "" {
			bad(path+".primaryKey", "is required")
		}
		if len(pol.Rights) == 0 {
			bad(path+".rights", "needs at least one of RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect")
		}
		for j, r := range pol.Rights {
			switch r {
			case sas.RegistryRead, sas.RegistryWrite, sas.ServiceConnect, sas.DeviceConnect:
			default:
				bad(fmt.Sprintf("%s.rights[%d]", path, j), "unknown right %q", r)
			}
		}
	}
	errs = append(errs, unjoin(p.Routing.Validate())...)
	l := c.Moat.Listeners
	for name, a := range map[string]*string{"mqtt": l.MQTT, "https": l.HTTPS, "mqttPlain": l.MQTTPlain, "metrics": l.Metrics} {
		if a == nil || *a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(*a); err != nil {
			bad("moat.listeners."+name, "%q is not host:port", *a)
		}
	}
	for _, p := range c.Moat.DNS.Problems() {
		bad("moat.dns."+p.Field, "%s", p.Msg)
	}
	switch strings.ToLower(c.Moat.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		bad("moat.logLevel", "must be debug, info, warn or error")
	}
	return errors.Join(errs...)
}

// endpointNameRE is IoT Hub's rule for endpoint names; they also name the
// endpoint's dead-letter directory.
var endpointNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Validate checks the routing properties: endpoint names and settings, and
// that routes, the fallback route and enrichments compile against the
// endpoints. Errors are FieldErrors under properties.routing.
func (r Routing) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	names := map[string]bool{}
	endpointName := func(path, name string) {
		switch {
		case !endpointNameRE.MatchString(name) || strings.Trim(name, ".") == "":
			bad(path+".name", "%q must be 1 to 64 letters, digits, '.', '_' or '-' (not only dots)", name)
		case strings.EqualFold(name, routing.BuiltInEvents) || strings.EqualFold(name, "fileNotifications") || strings.EqualFold(name, "$default"):
			bad(path+".name", "%q is reserved", name)
		case names[strings.ToLower(name)]:
			bad(path+".name", "duplicate endpoint %q", name)
		}
		names[strings.ToLower(name)] = true
	}
	endpointURL := func(path, raw string, schemes ...string) {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" || !slices.Contains(schemes, u.Scheme) {
			bad(path+".url", "must be a %s URL with a host", strings.Join(schemes, "/"))
		}
	}
	for i, w := range r.Endpoints.WebHooks {
		path := fmt.Sprintf("properties.routing.endpoints.webHooks[%d]", i)
		endpointName(path, w.Name)
		endpointURL(path, w.URL, "https", "http")
	}
	for i, b := range r.Endpoints.MQTTBridges {
		path := fmt.Sprintf("properties.routing.endpoints.mqttBridges[%d]", i)
		endpointName(path, b.Name)
		endpointURL(path, b.URL, "mqtts", "ssl", "tls", "mqtt", "tcp")
		if b.TopicTemplate == "" {
			bad(path+".topicTemplate", "is required")
		}
		if b.QoS > 1 {
			bad(path+".qos", "must be 0 or 1")
		}
	}
	for i, n := range r.Endpoints.NATS {
		path := fmt.Sprintf("properties.routing.endpoints.nats[%d]", i)
		endpointName(path, n.Name)
		endpointURL(path, n.URL, "nats", "tls")
		if n.SubjectTemplate == "" {
			bad(path+".subjectTemplate", "is required")
		}
	}
	for i, e := range r.Endpoints.EventHubs {
		path := fmt.Sprintf("properties.routing.endpoints.eventHubs[%d]", i)
		endpointName(path, e.Name)
		for _, pr := range e.Problems() {
			bad(path+"."+pr.Field, "%s", pr.Msg)
		}
	}
	for i, k := range r.Endpoints.Kafka {
		path := fmt.Sprintf("properties.routing.endpoints.kafka[%d]", i)
		endpointName(path, k.Name)
		for _, pr := range k.Problems() {
			bad(path+"."+pr.Field, "%s", pr.Msg)
		}
	}
	for i, sc := range r.Endpoints.StorageContainers {
		path := fmt.Sprintf("properties.routing.endpoints.storageContainers[%d]", i)
		endpointName(path, sc.Name)
		for _, pr := range sc.Problems() {
			bad(path+"."+pr.Field, "%s", pr.Msg)
		}
	}
	if _, err := routing.Compile(routing.Config{Routes: r.Routes, FallbackRoute: r.FallbackRoute, Enrichments: r.Enrichments}, "hub", r.EndpointNames()); err != nil {
		bad("properties.routing", "%v", err)
	}
	return errors.Join(errs...)
}

func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func validHostName(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 || strings.ContainsAny(h, ":/ ") {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// Addr returns a listener address with its default.
func Addr(a *string, def string) string {
	if a == nil {
		return def
	}
	return *a
}
