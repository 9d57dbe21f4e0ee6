package endpoint

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moat-iot/moat/internal/message"
)

// MQTTBridgeConfig forwards routed messages to another MQTT broker (an Event
// Grid namespace, Mosquitto, EMQX, …).
type MQTTBridgeConfig struct {
	Name string `json:"name"`
	// URL is the broker, e.g. "mqtts://broker.example:8883" or "tcp://10.0.0.5:1883".
	URL      string `json:"url"`
	ClientID string `json:"clientId,omitempty"`
	Username string `json:"username,omitempty"`
	// Password is a secret and never logged.
	Password string `json:"password,omitempty"`
	// TopicTemplate maps a message to a topic; {deviceId}, {moduleId} and
	// {topic} (the original MQTT topic of a plain-topic message) are replaced.
	TopicTemplate string `json:"topicTemplate"`
	QoS           byte   `json:"qos,omitempty"`
	// TLS, when set, verifies the broker with these roots.
	TLS *tls.Config `json:"-"`
}

// MQTTBridge is a Sink that publishes each message at the configured QoS and
// counts a batch delivered only when the broker acknowledged every message.
type MQTTBridge struct {
	cfg    MQTTBridgeConfig
	mu     sync.Mutex
	client paho.Client
}

// NewMQTTBridge returns a bridge; it connects on first use.
func NewMQTTBridge(cfg MQTTBridgeConfig) (*MQTTBridge, error) {
	if cfg.TopicTemplate == "" {
		return nil, errors.New("mqtt bridge: topicTemplate is required")
	}
	if cfg.QoS > 1 {
		return nil, errors.New("mqtt bridge: qos must be 0 or 1")
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "moat-bridge-" + cfg.Name
	}
	return &MQTTBridge{cfg: cfg}, nil
}

func (b *MQTTBridge) connect() (paho.Client, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.client != nil && b.client.IsConnectionOpen() {
		return b.client, nil
	}
	o := paho.NewClientOptions().AddBroker(b.cfg.URL).SetClientID(b.cfg.ClientID).
		SetUsername(b.cfg.Username).SetPassword(b.cfg.Password).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetOrderMatters(true)
	if b.cfg.TLS != nil {
		o.SetTLSConfig(b.cfg.TLS)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		err := tok.Error()
		if err == nil {
			err = errors.New("timed out")
		}
		return nil, fmt.Errorf("mqtt bridge %s: connect: %w", b.cfg.Name, err)
	}
	b.client = c
	return c, nil
}

// Topic returns the topic a message is published on.
func (b *MQTTBridge) Topic(m message.Message) string {
	return strings.NewReplacer(
		"{deviceId}", m.System[message.SysConnectionDevice],
		"{moduleId}", m.System[message.SysConnectionModule],
		"{topic}", m.System[message.SysMQTTTopic],
	).Replace(b.cfg.TopicTemplate)
}

// Send implements Sink.
func (b *MQTTBridge) Send(ctx context.Context, batch []message.Message) error {
	c, err := b.connect()
	if err != nil {
		return err
	}
	toks := make([]paho.Token, 0, len(batch))
	for _, m := range batch {
		toks = append(toks, c.Publish(b.Topic(m), b.cfg.QoS, false, m.Body))
	}
	for _, t := range toks {
		select {
		case <-t.Done():
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(30 * time.Second):
			c.Disconnect(0)
			return fmt.Errorf("mqtt bridge %s: publish not acknowledged in 30 s", b.cfg.Name)
		}
		if err := t.Error(); err != nil {
			c.Disconnect(0)
			return fmt.Errorf("mqtt bridge %s: publish: %w", b.cfg.Name, err)
		}
	}
	return nil
}

// Close implements Sink.
func (b *MQTTBridge) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.client != nil {
		b.client.Disconnect(250)
		b.client = nil
	}
	return nil
}
