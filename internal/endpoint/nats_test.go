package endpoint

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moat-iot/moat/internal/message"
)

// runNATS starts a real NATS server (with JetStream) on loopback.
func runNATS(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s
}

func TestNATSCore(t *testing.T) {
	s := runNATS(t)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ch := make(chan *nats.Msg, 4)
	if _, err := nc.ChanSubscribe("telemetry.>", ch); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	n, err := NewNATS(NATSConfig{Name: "n", URL: s.ClientURL(), SubjectTemplate: "telemetry.{deviceId}"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	m := message.Message{Body: []byte(`{"t":1}`), System: map[string]string{message.SysConnectionDevice: "dev.1", message.SysContentType: "application/json"}, Properties: map[string]string{"alert": "true"}}
	if err := n.Send(context.Background(), []message.Message{m}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ch:
		if got.Subject != "telemetry.dev_1" || string(got.Data) != `{"t":1}` || got.Header.Get("alert") != "true" || got.Header.Get("iothub-content-type") != "application/json" {
			t.Fatalf("got %s %s %v", got.Subject, got.Data, got.Header)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing received")
	}
}

func TestNATSJetStream(t *testing.T) {
	s := runNATS(t)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := NewNATS(NATSConfig{Name: "js", URL: s.ClientURL(), SubjectTemplate: "iot.{deviceId}", JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	batch := []message.Message{{Body: []byte("a"), System: map[string]string{message.SysConnectionDevice: "d1"}}, {Body: []byte("b"), System: map[string]string{message.SysConnectionDevice: "d1"}}}
	// No stream captures the subject yet: the batch is not stored, so it fails
	// (and a worker would retry it).
	if err := n.Send(ctx, batch); err == nil {
		t.Fatal("send without a stream succeeded")
	}
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IOT", Subjects: []string{"iot.>"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Send(ctx, batch); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, %v", info.State.Msgs, err)
	}
}
