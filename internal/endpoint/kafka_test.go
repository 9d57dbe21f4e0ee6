package endpoint

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
	"github.com/moat-iot/moat/internal/pki"
)

const testTopic = "telemetry"

// runKafka starts an in-process Kafka (franz-go's kfake speaks the real
// protocol) on loopback with a three-partition topic.
func runKafka(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(3, testTopic)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// consume reads the topic from the start until it has n records or 10 s pass.
func consume(t *testing.T, seeds []string, n int, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	opts = append([]kgo.Opt{kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(testTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d records before timing out", len(out), n)
		}
		for _, e := range fs.Errors() {
			t.Fatalf("fetch: %v", e.Err)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

func testMessage(dev, mod string, n int) message.Message {
	sys := map[string]string{
		message.SysConnectionDevice:  dev,
		message.SysConnectionAuth:    `{"scope":"device","type":"sas","issuer":"iothub"}`,
		message.SysConnectionAuthGen: "638000000000000000",
		message.SysMessageID:         fmt.Sprintf("m-%d", n),
		message.SysContentType:       "application/json",
		message.SysContentEncoding:   "utf-8",
		message.SysEnqueuedTime:      "2026-11-22T10:00:00.123Z",
	}
	if mod != "" {
		sys[message.SysConnectionModule] = mod
	}
	return message.Message{
		Body:       []byte(fmt.Sprintf(`{"n":%d}`, n)),
		System:     sys,
		Properties: map[string]string{"seq": strconv.Itoa(n), "alert": "true"},
		Enqueued:   time.Date(2026, 11, 22, 10, 0, 0, 123e6, time.UTC),
	}
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// fastSink builds a sink whose records fail after 1 s instead of 30
// (KAFKA_DEBUG=1 shows the client's log).
func fastSink(t *testing.T, cfg KafkaConfig) *Kafka {
	t.Helper()
	s, err := cfg.settings()
	if err != nil {
		t.Fatal(err)
	}
	s.deliveryTimeout, s.sendTimeout = time.Second, 3*time.Second
	if os.Getenv("KAFKA_DEBUG") != "" {
		s.extra = append(s.extra, kgo.WithLogger(kgo.BasicLogger(os.Stderr, kgo.LogLevelInfo, func() string { return time.Now().Format("15:04:05.000 ") })))
	}
	k, err := newKafkaSink(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// checkOrderPerKey checks that every key's records sit in one partition in
// the order they were sent (seq header ascending), and returns how many
// distinct seqs arrived.
func checkOrderPerKey(t *testing.T, recs []*kgo.Record) int {
	t.Helper()
	part := map[string]int32{}
	last := map[string]int{}
	seen := map[string]bool{}
	for _, r := range recs {
		k := string(r.Key)
		if p, ok := part[k]; ok && p != r.Partition {
			t.Fatalf("key %s in partitions %d and %d", k, p, r.Partition)
		}
		part[k] = r.Partition
		s, _ := header(r, "seq")
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("record without seq: %v", r.Headers)
		}
		if n < last[k] {
			// A resent batch may repeat records, but never reorders what
			// was first delivered: only duplicates may go backwards.
			if !seen[s] {
				t.Fatalf("key %s: seq %d after %d and never seen before", k, n, last[k])
			}
		}
		last[k] = max(last[k], n)
		seen[s] = true
	}
	return len(seen)
}

func TestKafkaDeliversBatch(t *testing.T) {
	c := runKafka(t)
	k := fastSink(t, KafkaConfig{Name: "k", Brokers: c.ListenAddrs(), Topic: testTopic, Compression: "zstd"})
	var batch []message.Message
	devs := [][2]string{{"d1", ""}, {"d2", ""}, {"d3", "modA"}, {"d3", ""}}
	for n := range 40 {
		d := devs[n%len(devs)]
		batch = append(batch, testMessage(d[0], d[1], n))
	}
	empty := message.Message{System: map[string]string{message.SysConnectionDevice: "d1"}, Properties: map[string]string{"seq": "40"}}
	batch = append(batch, empty)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now().Add(-time.Second)
	if err := k.Send(ctx, batch); err != nil {
		t.Fatal(err)
	}
	recs := consume(t, c.ListenAddrs(), len(batch))
	if len(recs) != len(batch) {
		t.Fatalf("got %d records, want %d", len(recs), len(batch))
	}
	if got := checkOrderPerKey(t, recs); got != len(batch) {
		t.Fatalf("%d distinct records", got)
	}
	keys := map[string]bool{}
	for _, r := range recs {
		keys[string(r.Key)] = true
		s, _ := header(r, "seq")
		if s == "40" {
			if r.Value == nil || len(r.Value) != 0 || string(r.Key) != "d1" {
				t.Fatalf("empty body went out as %q (nil %v), key %q", r.Value, r.Value == nil, r.Key)
			}
			continue
		}
		n, _ := strconv.Atoi(s)
		want := testMessage(devs[n%len(devs)][0], devs[n%len(devs)][1], n)
		if string(r.Value) != string(want.Body) {
			t.Fatalf("record %d value %s", n, r.Value)
		}
		// The producer stamps its own time; IoT Hub's is in a header. Old
		// messages (the test's are from 2026-11-22) must not time out.
		if r.Topic != testTopic || r.Timestamp.Before(start) {
			t.Fatalf("record %d topic %s timestamp %v", n, r.Topic, r.Timestamp)
		}
		var names []string
		for _, h := range r.Headers {
			names = append(names, h.Key)
		}
		wantNames := []string{"content-encoding", "content-type", "iothub-connection-auth-generation-id", "iothub-connection-auth-method",
			"iothub-connection-device-id", "iothub-connection-module-id", "iothub-enqueuedtime", "message-id", "alert", "seq"}
		if want.System[message.SysConnectionModule] == "" {
			wantNames = slicesDelete(wantNames, "iothub-connection-module-id")
		}
		if !reflect.DeepEqual(names, wantNames) {
			t.Fatalf("record %d headers %v, want %v", n, names, wantNames)
		}
		for k, v := range want.System {
			if got, _ := header(r, k); got != v {
				t.Fatalf("record %d header %s = %q, want %q", n, k, got, v)
			}
		}
	}
	if !reflect.DeepEqual(keys, map[string]bool{"d1": true, "d2": true, "d3": true, "d3/modA": true}) {
		t.Fatalf("keys %v", keys)
	}
}

func slicesDelete(s []string, v string) []string {
	var out []string
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

func TestKafkaSASL(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			c := runKafka(t, kfake.EnableSASL(), kfake.Superuser(mech, "moat", "s3cret-pw"))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			k := fastSink(t, KafkaConfig{Name: "k", Brokers: c.ListenAddrs(), Topic: testTopic,
				SASL: KafkaSASL{Mechanism: strings.ToLower(mech), Username: "moat", Password: "s3cret-pw"}})
			if err := k.Send(ctx, []message.Message{testMessage("d1", "", 1)}); err != nil {
				t.Fatal(err)
			}
			s, _ := (KafkaConfig{Brokers: []string{"x:1"}, Topic: "t", SASL: KafkaSASL{Mechanism: mech, Username: "moat", Password: "s3cret-pw"}}).settings()
			mechanism, _ := s.auth.saslMechanism()
			recs := consume(t, c.ListenAddrs(), 1, kgo.SASL(mechanism))
			if string(recs[0].Value) != `{"n":1}` {
				t.Fatalf("got %s", recs[0].Value)
			}

			bad := fastSink(t, KafkaConfig{Name: "wrong", Brokers: c.ListenAddrs(), Topic: testTopic,
				SASL: KafkaSASL{Mechanism: mech, Username: "moat", Password: "not-it"}})
			err := bad.Send(ctx, []message.Message{testMessage("d1", "", 2)})
			if err == nil {
				t.Fatal("send with a wrong password succeeded")
			}
			if !strings.Contains(err.Error(), "kafka endpoint wrong") || !strings.Contains(strings.ToUpper(err.Error()), "SASL") {
				t.Fatalf("unclear error: %v", err)
			}
			if strings.Contains(err.Error(), "not-it") {
				t.Fatalf("error reveals the password: %v", err)
			}
			t.Logf("wrong password: %v", err)
		})
	}
}

// testPKI is a CA with a server certificate for 127.0.0.1 and localhost.
func testPKI(t *testing.T) *pki.Authority {
	t.Helper()
	a, err := pki.LoadOrCreate(t.TempDir(), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestKafkaTLS(t *testing.T) {
	a := testPKI(t)
	c := runKafka(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{a.ServerCertificate()}, MinVersion: tls.VersionTLS12}),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "moat", "pw"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sasl := KafkaSASL{Mechanism: "SCRAM-SHA-256", Username: "moat", Password: "pw"}

	k := fastSink(t, KafkaConfig{Name: "k", Brokers: c.ListenAddrs(), Topic: testTopic, SASL: sasl,
		TLS: KafkaTLS{Enabled: true, CAFile: a.Paths().CACert}})
	if err := k.Send(ctx, []message.Message{testMessage("d1", "", 1)}); err != nil {
		t.Fatal(err)
	}
	// The broker's certificate names localhost too.
	k2 := fastSink(t, KafkaConfig{Name: "k2", Brokers: c.ListenAddrs(), Topic: testTopic, SASL: sasl,
		TLS: KafkaTLS{Enabled: true, CAFile: a.Paths().CACert, ServerName: "localhost"}})
	if err := k2.Send(ctx, []message.Message{testMessage("d1", "", 2)}); err != nil {
		t.Fatal(err)
	}
	s, _ := (KafkaConfig{Brokers: []string{"x:1"}, Topic: "t", SASL: sasl}).settings()
	mech, _ := s.auth.saslMechanism()
	recs := consume(t, c.ListenAddrs(), 2, kgo.SASL(mech), kgo.DialTLSConfig(&tls.Config{RootCAs: a.CAPool(), MinVersion: tls.VersionTLS12}))
	if string(recs[0].Value)+string(recs[1].Value) != `{"n":1}{"n":2}` {
		t.Fatalf("got %s %s", recs[0].Value, recs[1].Value)
	}

	// The system roots do not know this CA; neither does a wrong name pass.
	for name, tc := range map[string]KafkaTLS{
		"untrusted": {Enabled: true},
		"wrongName": {Enabled: true, CAFile: a.Paths().CACert, ServerName: "kafka.example"},
	} {
		bad := fastSink(t, KafkaConfig{Name: name, Brokers: c.ListenAddrs(), Topic: testTopic, SASL: sasl, TLS: tc})
		err := bad.Send(ctx, []message.Message{testMessage("d1", "", 3)})
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("%s: want a certificate error, got %v", name, err)
		}
	}
	// Plaintext to a TLS listener fails too.
	plain := fastSink(t, KafkaConfig{Name: "plain", Brokers: c.ListenAddrs(), Topic: testTopic, SASL: sasl})
	if err := plain.Send(ctx, []message.Message{testMessage("d1", "", 4)}); err == nil {
		t.Fatal("plaintext send to a TLS broker succeeded")
	}

	if _, err := NewKafka(KafkaConfig{Name: "k", Brokers: []string{"127.0.0.1:1"}, Topic: "t", TLS: KafkaTLS{Enabled: true, CAFile: filepath.Join(t.TempDir(), "none.pem")}}); err == nil || !strings.Contains(err.Error(), "tls.caFile") {
		t.Fatalf("missing CA file: %v", err)
	}
}

func TestKafkaSendBoundedByContext(t *testing.T) {
	// Nothing listens here: records wait for a broker until ctx ends.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	k, err := NewKafka(KafkaConfig{Name: "k", Brokers: []string{addr}, Topic: testTopic})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = k.Send(ctx, []message.Message{testMessage("d1", "", 1)})
	if err == nil {
		t.Fatal("send without a broker succeeded")
	}
	_ = k.Close() // may report the records it could not flush
	if err := k.Send(context.Background(), nil); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	if err := k.Send(context.Background(), []message.Message{testMessage("d1", "", 1)}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("send after close: %v", err)
	}
}

// TestKafkaWorkerRidesOutBrokerRestart runs a Worker over a pebble log into
// Kafka, takes the broker down mid-stream and brings it back (with its data):
// the Worker keeps retrying and every message arrives.
func TestKafkaWorkerRidesOutBrokerRestart(t *testing.T) {
	dataDir := t.TempDir()
	c1, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, testTopic), kfake.DataDir(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	addr := c1.ListenAddrs()[0]
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)

	log, err := msglog.OpenPebble(t.TempDir(), msglog.PebbleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	sink := fastSink(t, KafkaConfig{Name: "k", Brokers: []string{addr}, Topic: testTopic})
	w := NewWorker(Config{Name: "k", Log: log, Sink: sink, BatchSize: 10,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		Select: func(uint64, message.Message) (bool, map[string]string) { return true, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	appendMsgs := func(from, to int) {
		for n := from; n < to; n++ {
			rec, err := msglog.EncodeMessage(testMessage(fmt.Sprintf("d%d", n%4), "", n))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := log.Append(context.Background(), rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	cursorAt := func(want uint64) func() bool {
		return func() bool {
			c, _ := log.Cursor(context.Background(), w.Consumer())
			return c == want
		}
	}
	waitLong := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (health %+v)", what, w.Health())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	appendMsgs(0, 50)
	waitLong("first 50 delivered", cursorAt(51))
	c1.Close()
	appendMsgs(50, 100)
	waitLong("a failed send", func() bool { return w.Health().HealthStatus == Unhealthy })
	if c, _ := log.Cursor(context.Background(), w.Consumer()); c > 51 {
		t.Fatalf("cursor moved to %d while the broker was down", c)
	}
	t.Logf("while down: %s", w.Health().LastKnownError)

	c2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	waitLong("all 100 delivered", cursorAt(101))
	if h := w.Health(); h.HealthStatus != Degraded && h.HealthStatus != Healthy {
		t.Fatalf("health after recovery %+v", h)
	}

	recs := consume(t, c2.ListenAddrs(), 100)
	if got := checkOrderPerKey(t, recs); got != 100 {
		t.Fatalf("%d of 100 messages arrived", got)
	}
	t.Logf("%d records for 100 messages (duplicates from resent batches)", len(recs))
}

func TestKafkaConfigProblems(t *testing.T) {
	ok := KafkaConfig{Name: "k", Brokers: []string{"10.0.0.7:9092", "[::1]:9093", "kafka-1.plant:9092"}, Topic: "iot.telemetry_v1-a",
		TLS: KafkaTLS{Enabled: true, CAFile: "/etc/ca.pem", ServerName: "kafka"}, SASL: KafkaSASL{Mechanism: "scram-sha-512", Username: "u", Password: "p"}, Compression: "LZ4"}
	if p := ok.Problems(); len(p) != 0 {
		t.Fatalf("valid config: %v", p[0])
	}
	tests := []struct {
		name   string
		mutate func(*KafkaConfig)
		fields []string
	}{
		{"no brokers", func(c *KafkaConfig) { c.Brokers = nil }, []string{"brokers"}},
		{"bad brokers", func(c *KafkaConfig) { c.Brokers = []string{"kafka", "kafka:0", ":9092", "kafka:x", "h:9092"} },
			[]string{"brokers[0]", "brokers[1]", "brokers[2]", "brokers[3]"}},
		{"no topic", func(c *KafkaConfig) { c.Topic = "" }, []string{"topic"}},
		{"bad topic", func(c *KafkaConfig) { c.Topic = "a/b" }, []string{"topic"}},
		{"dot topic", func(c *KafkaConfig) { c.Topic = ".." }, []string{"topic"}},
		{"long topic", func(c *KafkaConfig) { c.Topic = strings.Repeat("a", 250) }, []string{"topic"}},
		{"tls off", func(c *KafkaConfig) { c.TLS.Enabled = false }, []string{"tls.enabled"}},
		{"tls insecure with ca", func(c *KafkaConfig) { c.TLS.InsecureSkipVerify = true }, []string{"tls.insecureSkipVerify"}},
		{"sasl unknown", func(c *KafkaConfig) { c.SASL.Mechanism = "GSSAPI" }, []string{"sasl.mechanism"}},
		{"sasl no mechanism", func(c *KafkaConfig) { c.SASL.Mechanism = "" }, []string{"sasl.mechanism"}},
		{"sasl no user", func(c *KafkaConfig) { c.SASL.Username, c.SASL.Password = "", "" }, []string{"sasl.username", "sasl.password"}},
		{"compression", func(c *KafkaConfig) { c.Compression = "brotli" }, []string{"compression"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			c.Brokers = append([]string(nil), ok.Brokers...)
			tt.mutate(&c)
			var fields []string
			for _, p := range c.Problems() {
				fields = append(fields, p.Field)
			}
			if !reflect.DeepEqual(fields, tt.fields) {
				t.Fatalf("problems at %v, want %v", fields, tt.fields)
			}
			if _, err := NewKafka(c); err == nil || !strings.Contains(err.Error(), tt.fields[0]) {
				t.Fatalf("NewKafka: %v", err)
			}
		})
	}
}

// BenchmarkKafkaSend sends batches of 100 messages (256-byte bodies, as the
// Worker does by default) to an in-process Kafka.
func BenchmarkKafkaSend(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, testTopic))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	k, err := NewKafka(KafkaConfig{Name: "bench", Brokers: c.ListenAddrs(), Topic: testTopic})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	batch := make([]message.Message, 100)
	for i := range batch {
		batch[i] = testMessage(fmt.Sprintf("d%d", i%10), "", i)
		batch[i].Body = make([]byte, 256)
	}
	ctx := context.Background()
	for b.Loop() {
		if err := k.Send(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "msgs/s")
}
