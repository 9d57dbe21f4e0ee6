package endpoint

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moat-iot/moat/internal/message"
)

// NATSConfig publishes routed messages to a NATS subject, through JetStream
// (acknowledged, durable) when JetStream is set.
type NATSConfig struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// SubjectTemplate maps a message to a subject; {deviceId} and {moduleId}
	// are replaced ('.' in ids becomes '_', since '.' separates tokens).
	SubjectTemplate string `json:"subjectTemplate"`
	JetStream       bool   `json:"jetStream,omitempty"`
	// Token is a secret and never logged.
	Token string `json:"token,omitempty"`
}

// NATS is a Sink. Message properties travel as NATS headers.
type NATS struct {
	cfg NATSConfig
	mu  sync.Mutex
	nc  *nats.Conn
	js  jetstream.JetStream
}

// NewNATS returns a NATS sink; it connects on first use.
func NewNATS(cfg NATSConfig) (*NATS, error) {
	if cfg.SubjectTemplate == "" {
		return nil, errors.New("nats endpoint: subjectTemplate is required")
	}
	return &NATS{cfg: cfg}, nil
}

func (n *NATS) conn() (*nats.Conn, jetstream.JetStream, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nc != nil && n.nc.IsConnected() {
		return n.nc, n.js, nil
	}
	if n.nc != nil {
		n.nc.Close()
	}
	opts := []nats.Option{nats.Name("moat-endpoint-" + n.cfg.Name), nats.Timeout(10 * time.Second), nats.NoReconnect()}
	if n.cfg.Token != "" {
		opts = append(opts, nats.Token(n.cfg.Token))
	}
	nc, err := nats.Connect(n.cfg.URL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("nats endpoint %s: connect: %w", n.cfg.Name, err)
	}
	n.nc = nc
	n.js = nil
	if n.cfg.JetStream {
		if n.js, err = jetstream.New(nc); err != nil {
			return nil, nil, fmt.Errorf("nats endpoint %s: jetstream: %w", n.cfg.Name, err)
		}
	}
	return n.nc, n.js, nil
}

// Subject returns the subject for a message.
func (n *NATS) Subject(m message.Message) string {
	tok := func(s string) string {
		if s == "" {
			return "_"
		}
		return strings.NewReplacer(".", "_", " ", "_", "*", "_", ">", "_").Replace(s)
	}
	return strings.NewReplacer("{deviceId}", tok(m.System[message.SysConnectionDevice]), "{moduleId}", tok(m.System[message.SysConnectionModule])).Replace(n.cfg.SubjectTemplate)
}

func (n *NATS) natsMsg(m message.Message) *nats.Msg {
	msg := nats.NewMsg(n.Subject(m))
	msg.Data = m.Body
	for k, v := range m.System {
		msg.Header.Set("iothub-"+strings.TrimPrefix(k, "iothub-"), v)
	}
	for k, v := range m.Properties {
		msg.Header.Set(k, v)
	}
	return msg
}

// Send implements Sink. With JetStream every message must be acknowledged by
// the stream; with core NATS the batch is flushed to the server.
func (n *NATS) Send(ctx context.Context, batch []message.Message) error {
	nc, js, err := n.conn()
	if err != nil {
		return err
	}
	if js != nil {
		futures := make([]jetstream.PubAckFuture, 0, len(batch))
		for _, m := range batch {
			f, err := js.PublishMsgAsync(n.natsMsg(m))
			if err != nil {
				return fmt.Errorf("nats endpoint %s: publish: %w", n.cfg.Name, err)
			}
			futures = append(futures, f)
		}
		// Every publish settles before Send returns, failed or not: the
		// client retries a publish no stream took yet in the background, and
		// one that succeeded after a failed Send returned would be stored
		// beside the worker's retry of the same batch.
		var first error
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				if first == nil {
					first = fmt.Errorf("nats endpoint %s: not stored: %w", n.cfg.Name, err)
				}
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return first
	}
	for _, m := range batch {
		if err := nc.PublishMsg(n.natsMsg(m)); err != nil {
			return fmt.Errorf("nats endpoint %s: publish: %w", n.cfg.Name, err)
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		return fmt.Errorf("nats endpoint %s: flush: %w", n.cfg.Name, err)
	}
	return nil
}

// Close implements Sink.
func (n *NATS) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nc != nil {
		n.nc.Close()
		n.nc = nil
	}
	return nil
}
