package mqttdevice

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// identity is who a connection claims to be: a device, or a module of one.
type identity struct {
	DeviceID string
	ModuleID string
}

func (id identity) clientID() string {
	if id.ModuleID == "" {
		return id.DeviceID
	}
	return id.DeviceID + "/" + id.ModuleID
}

// parseClientID splits an MQTT client id into device and module ids.
func parseClientID(s string) (identity, error) {
	if s == "" {
		return identity{}, errors.New("empty client id")
	}
	d, m, found := strings.Cut(s, "/")
	if d == "" || (found && (m == "" || strings.Contains(m, "/"))) {
		return identity{}, fmt.Errorf("client id %q is not {deviceId} or {deviceId}/{moduleId}", s)
	}
	return identity{DeviceID: d, ModuleID: m}, nil
}

// username is a parsed CONNECT user name.
type username struct {
	Host       string
	ClientID   string
	APIVersion string
	ModelID    string
	ClientType string
}

// parseUsername parses IoT Hub's CONNECT user name in its current form
// "{host}/{clientId}/?api-version=…&DeviceClientType=…[&model-id=…]", the
// module form "{host}/{device}/{module}/?…" and the legacy form
// "{host}/{clientId}/api-version=…" that has no '?'.
func parseUsername(s string) (username, error) {
	if len(s) > 2048 {
		return username{}, errors.New("user name too long")
	}
	var path, query string
	if i := strings.Index(s, "/?"); i >= 0 {
		path, query = s[:i], s[i+2:]
	} else if i := strings.Index(s, "/api-version="); i >= 0 {
		path, query = s[:i], s[i+1:]
	} else {
		path = strings.TrimSuffix(s, "/")
	}
	host, client, ok := strings.Cut(path, "/")
	if !ok || host == "" || client == "" {
		return username{}, fmt.Errorf("user name is not {hostName}/{clientId}/?api-version=…")
	}
	u := username{Host: host, ClientID: client}
	if query != "" {
		// model-id is sent unencoded and may contain ':' and ';' — parse by hand
		// so that ParseQuery's ';' rejection does not bite.
		for _, kv := range strings.Split(query, "&") {
			k, v, _ := strings.Cut(kv, "=")
			dv, err := url.QueryUnescape(v)
			if err != nil {
				dv = v
			}
			switch strings.ToLower(k) {
			case "api-version":
				u.APIVersion = dv
			case "model-id":
				u.ModelID = dv
			case "deviceclienttype":
				u.ClientType = dv
			}
		}
	}
	return u, nil
}

// topicKind is what a device-published topic means.
type topicKind int

const (
	topicOther topicKind = iota // a plain MQTT topic outside IoT Hub's namespace
	topicTelemetry
	topicTwinGet
	topicTwinReported
	topicMethodResponse
	topicForbidden // inside IoT Hub's namespace but not this identity's
)

// publishTopic classifies a topic published by id. For telemetry it returns the
// property bag; for twin and method topics the request id and, for method
// responses, the status.
type publishTopic struct {
	Kind   topicKind
	Bag    string
	RID    string
	Status int
}

func eventsPrefix(id identity) string {
	if id.ModuleID == "" {
		return "devices/" + id.DeviceID + "/messages/events"
	}
	return "devices/" + id.DeviceID + "/modules/" + id.ModuleID + "/messages/events"
}

func classifyPublish(id identity, topic string) (publishTopic, error) {
	switch {
	case strings.HasPrefix(topic, "devices/"):
		prefix := eventsPrefix(id)
		rest, ok := strings.CutPrefix(topic, prefix)
		if !ok || (rest != "" && rest[0] != '/') {
			return publishTopic{Kind: topicForbidden}, nil
		}
		bag := strings.TrimPrefix(rest, "/")
		bag = strings.TrimSuffix(bag, "/") // module output events end in '/'
		if strings.Contains(bag, "/") {
			return publishTopic{}, fmt.Errorf("telemetry topic has an unescaped '/' in its property bag")
		}
		return publishTopic{Kind: topicTelemetry, Bag: bag}, nil
	case strings.HasPrefix(topic, "$iothub/"):
		path, query, _ := strings.Cut(topic, "/?")
		rid := requestID(query)
		switch {
		case path == "$iothub/twin/GET":
			return publishTopic{Kind: topicTwinGet, RID: rid}, nil
		case path == "$iothub/twin/PATCH/properties/reported":
			return publishTopic{Kind: topicTwinReported, RID: rid}, nil
		case strings.HasPrefix(path, "$iothub/methods/res/"):
			st, err := strconv.Atoi(strings.TrimPrefix(path, "$iothub/methods/res/"))
			if err != nil || st < 0 || st > 999 {
				return publishTopic{}, fmt.Errorf("method response topic has no numeric status")
			}
			if rid == "" {
				return publishTopic{}, fmt.Errorf("method response topic has no $rid")
			}
			return publishTopic{Kind: topicMethodResponse, RID: rid, Status: st}, nil
		}
		return publishTopic{Kind: topicForbidden}, nil
	case strings.HasPrefix(topic, "$"):
		return publishTopic{Kind: topicForbidden}, nil
	}
	return publishTopic{Kind: topicOther}, nil
}

// requestID returns $rid from a topic's query part byte for byte: clients match
// responses on the exact string they sent.
func requestID(query string) string {
	for _, kv := range strings.Split(query, "&") {
		if v, ok := strings.CutPrefix(kv, "$rid="); ok {
			return v
		}
	}
	return ""
}

func deviceboundPrefix(id identity) string {
	return "devices/" + id.DeviceID + "/messages/devicebound/"
}

func inputsPrefix(id identity) string {
	return "devices/" + id.DeviceID + "/modules/" + id.ModuleID + "/inputs/"
}

// canRead reports whether id may subscribe to filter, or receive a message on a
// topic. IoT Hub's own topics are allowed only in the identity's namespace;
// plain topics are allowed unless they start with a wildcard level, which could
// reach into other devices' namespaces.
func canRead(id identity, filter string) bool {
	switch {
	case strings.HasPrefix(filter, "$iothub/"):
		return strings.HasPrefix(filter, "$iothub/methods/POST/") ||
			strings.HasPrefix(filter, "$iothub/twin/res/") ||
			strings.HasPrefix(filter, "$iothub/twin/PATCH/properties/desired/")
	case strings.HasPrefix(filter, "devices/"):
		if id.ModuleID != "" {
			return strings.HasPrefix(filter, inputsPrefix(id))
		}
		p := deviceboundPrefix(id)
		return strings.HasPrefix(filter, p) || filter == strings.TrimSuffix(p, "/")
	case strings.HasPrefix(filter, "$"), strings.HasPrefix(filter, "#"), strings.HasPrefix(filter, "+"):
		return false
	}
	return true
}
