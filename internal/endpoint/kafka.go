package endpoint

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/moat-iot/moat/internal/message"
)

// KafkaConfig publishes routed messages to a topic of any Kafka cluster.
//
//	kafka:
//	- name: plant-kafka
//	  brokers: ["10.0.0.7:9092", "10.0.0.8:9092"]
//	  topic: telemetry
//	  tls: {enabled: true, caFile: /etc/moat/kafka-ca.pem}
//	  sasl: {mechanism: SCRAM-SHA-512, username: moat, password: "..."}
//	  compression: zstd
type KafkaConfig struct {
	Name    string   `json:"name"`
	Brokers []string `json:"brokers"`
	Topic   string   `json:"topic"`
	TLS     KafkaTLS `json:"tls,omitzero"`
	// SASL is off when Mechanism is empty.
	SASL KafkaSASL `json:"sasl,omitzero"`
	// Compression is none (default), gzip, snappy, lz4 or zstd.
	Compression string `json:"compression,omitempty"`
}

// KafkaTLS is TLS to the brokers. Without CAFile the system roots verify them.
type KafkaTLS struct {
	Enabled    bool   `json:"enabled,omitempty"`
	CAFile     string `json:"caFile,omitempty"`
	ServerName string `json:"serverName,omitempty"`
	// InsecureSkipVerify accepts any broker certificate: for tests only.
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`
}

// KafkaSASL authenticates to the brokers.
type KafkaSASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism string `json:"mechanism,omitempty"`
	Username  string `json:"username,omitempty"`
	// Password is a secret and never logged.
	Password string `json:"password,omitempty"`
}

// LogValue keeps the password out of logs.
func (c KafkaConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", c.Name), slog.Any("brokers", c.Brokers), slog.String("topic", c.Topic),
		slog.Bool("tls", c.TLS.Enabled), slog.String("sasl", c.SASL.Mechanism))
}

// KafkaConfigError is one problem in a kafka or eventHubs endpoint's
// configuration, naming its field relative to the endpoint ("brokers[1]",
// "sasl.mechanism"), for the config package to prefix.
type KafkaConfigError struct {
	Field string
	Msg   string
}

func (e *KafkaConfigError) Error() string { return e.Field + ": " + e.Msg }

// SASL mechanism names, as Kafka spells them.
const (
	saslPlain     = "PLAIN"
	saslSCRAM256  = "SCRAM-SHA-256"
	saslSCRAM512  = "SCRAM-SHA-512"
	kafkaNoCompr  = "none"
	maxTopicChars = 249 // Kafka's limit on topic names
)

var kafkaCodecs = map[string]kgo.CompressionCodec{
	kafkaNoCompr: kgo.NoCompression(),
	"gzip":       kgo.GzipCompression(),
	"snappy":     kgo.SnappyCompression(),
	"lz4":        kgo.Lz4Compression(),
	"zstd":       kgo.ZstdCompression(),
}

// Problems lists everything wrong with c except its name (which the config
// package checks across all endpoints). It reads no files.
func (c KafkaConfig) Problems() []*KafkaConfigError {
	var out []*KafkaConfigError
	bad := func(field, format string, args ...any) {
		out = append(out, &KafkaConfigError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if len(c.Brokers) == 0 {
		bad("brokers", "at least one host:port is required")
	}
	for i, b := range c.Brokers {
		if !validHostPort(b) {
			bad(fmt.Sprintf("brokers[%d]", i), "%q is not host:port", b)
		}
	}
	if msg := topicProblem(c.Topic); msg != "" {
		bad("topic", "%s", msg)
	}
	t := c.TLS
	if !t.Enabled && (t.CAFile != "" || t.ServerName != "" || t.InsecureSkipVerify) {
		bad("tls.enabled", "must be true when caFile, serverName or insecureSkipVerify is set")
	}
	if t.InsecureSkipVerify && t.CAFile != "" {
		bad("tls.insecureSkipVerify", "cannot be combined with caFile")
	}
	s := c.SASL
	switch strings.ToUpper(s.Mechanism) {
	case "":
		if s.Username != "" || s.Password != "" {
			bad("sasl.mechanism", "is required when username or password is set (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
		}
	case saslPlain, saslSCRAM256, saslSCRAM512:
		if s.Username == "" {
			bad("sasl.username", "is required")
		}
		if s.Password == "" {
			bad("sasl.password", "is required")
		}
	default:
		bad("sasl.mechanism", "%q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", s.Mechanism)
	}
	if _, ok := kafkaCodecs[strings.ToLower(c.Compression)]; !ok && c.Compression != "" {
		bad("compression", "%q is not none, gzip, snappy, lz4 or zstd", c.Compression)
	}
	return out
}

func validHostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || strings.ContainsAny(host, "/ ") {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n > 0 && n < 65536
}

// topicProblem says what is wrong with a Kafka topic name, or "".
func topicProblem(t string) string {
	switch {
	case t == "":
		return "is required"
	case len(t) > maxTopicChars:
		return fmt.Sprintf("is longer than %d characters", maxTopicChars)
	case t == "." || t == "..":
		return fmt.Sprintf("%q is not a valid topic name", t)
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Sprintf("%q may contain only letters, digits, '.', '_' and '-'", t)
		}
	}
	return ""
}

// problemsError joins problems into one error for a constructor.
func problemsError(kind, name string, ps []*KafkaConfigError) error {
	if len(ps) == 0 {
		return nil
	}
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = p
	}
	return fmt.Errorf("%s %s: %w", kind, name, errors.Join(errs...))
}

// kafkaAuth is a resolved SASL login. saslMechanism is the one place that
// turns it into a franz-go mechanism, so that OAUTHBEARER (an Entra token for
// Event Hubs with identityBased authentication) plugs in here later.
type kafkaAuth struct {
	mechanism string // "" for none
	user      string
	pass      string // secret
}

func (a kafkaAuth) saslMechanism() (sasl.Mechanism, error) {
	switch strings.ToUpper(a.mechanism) {
	case "":
		return nil, nil
	case saslPlain:
		return plain.Auth{User: a.user, Pass: a.pass}.AsMechanism(), nil
	case saslSCRAM256:
		return scram.Auth{User: a.user, Pass: a.pass}.AsSha256Mechanism(), nil
	case saslSCRAM512:
		return scram.Auth{User: a.user, Pass: a.pass}.AsSha512Mechanism(), nil
	default:
		return nil, fmt.Errorf("SASL mechanism %q is not supported", a.mechanism)
	}
}

// Producer timings. A record that cannot be delivered fails after
// deliveryTimeout, well inside the Worker's retry period, so a broken
// endpoint shows up as a failed Send (and in the endpoint's health) rather
// than as a Send that never returns. An idempotent producer cannot fail a
// batch whose request went out unanswered (the broker died mid-request): it
// holds it until that broker answers. sendTimeout ends such a wait; Send then
// discards the client, failing what it held, and the next Send starts afresh
// with a new producer id. What the old client may still have written comes
// back as duplicates, which at-least-once delivery allows; piling every retry
// of the batch up behind the stuck one would add more.
const (
	defaultDeliveryTimeout = 30 * time.Second
	defaultSendTimeout     = 45 * time.Second
	closeFlushTimeout      = 5 * time.Second
)

// kafkaSettings is everything a Kafka sink needs, resolved from a kafka or
// eventHubs endpoint's configuration.
type kafkaSettings struct {
	kind, name string // for errors: "kafka endpoint", "plant-kafka"
	seeds      []string
	topic      string
	tls        *tls.Config // nil: plaintext
	auth       kafkaAuth
	codec      kgo.CompressionCodec
	// extra are options particular to one kind of endpoint.
	extra           []kgo.Opt
	deliveryTimeout time.Duration
	sendTimeout     time.Duration
}

// brokerTrouble remembers the latest failure to connect or log in to a
// broker. A record that times out says only "last err: EOF" when a broker
// hangs up during SASL (as some do on a wrong password); these hooks say
// which step failed, so Send's error, and the endpoint's health, can.
type brokerTrouble struct {
	mu             sync.Mutex
	sasl, conn     string
	saslAt, connAt time.Time
}

var (
	_ kgo.HookBrokerConnect = (*brokerTrouble)(nil)
	_ kgo.HookBrokerE2E     = (*brokerTrouble)(nil)
)

func (b *brokerTrouble) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.conn, b.connAt = fmt.Sprintf("connecting to %s: %v", net.JoinHostPort(meta.Host, strconv.Itoa(int(meta.Port))), err), time.Now()
}

func (b *brokerTrouble) OnBrokerE2E(meta kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	err := e2e.Err()
	if err == nil || (key != int16(kmsg.SASLHandshake) && key != int16(kmsg.SASLAuthenticate)) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sasl, b.saslAt = fmt.Sprintf("SASL authentication with %s failed (wrong mechanism, user or password?): %v", net.JoinHostPort(meta.Host, strconv.Itoa(int(meta.Port))), err), time.Now()
}

// since returns the most telling trouble seen after t, or "".
func (b *brokerTrouble) since(t time.Time) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.sasl != "" && !b.saslAt.Before(t):
		return b.sasl
	case b.conn != "" && !b.connAt.Before(t):
		return b.conn
	}
	return ""
}

// Kafka is a Sink that produces each message as one record. A batch counts as
// delivered only when every record is acknowledged by all in-sync replicas;
// the producer is idempotent, so its own retries add no duplicates (the
// Worker's retries of a failed batch may).
type Kafka struct {
	s       kafkaSettings
	opts    []kgo.Opt
	trouble *brokerTrouble

	mu     sync.Mutex
	client *kgo.Client
	closed bool
}

// NewKafka returns a Kafka sink; it connects on first use. It reads the CA
// file now, so a missing file is a start-up error.
func NewKafka(cfg KafkaConfig) (*Kafka, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	return newKafkaSink(s)
}

func (cfg KafkaConfig) settings() (kafkaSettings, error) {
	const kind = "kafka endpoint"
	if err := problemsError(kind, cfg.Name, cfg.Problems()); err != nil {
		return kafkaSettings{}, err
	}
	s := kafkaSettings{
		kind: kind, name: cfg.Name, seeds: slices.Clone(cfg.Brokers), topic: cfg.Topic,
		auth:  kafkaAuth{mechanism: strings.ToUpper(cfg.SASL.Mechanism), user: cfg.SASL.Username, pass: cfg.SASL.Password},
		codec: kafkaCodecs[kafkaNoCompr],
	}
	if c := strings.ToLower(cfg.Compression); c != "" {
		s.codec = kafkaCodecs[c]
	}
	if cfg.TLS.Enabled {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLS.ServerName, InsecureSkipVerify: cfg.TLS.InsecureSkipVerify}
		if cfg.TLS.CAFile != "" {
			pem, err := os.ReadFile(cfg.TLS.CAFile)
			if err != nil {
				return kafkaSettings{}, fmt.Errorf("%s %s: tls.caFile: %w", kind, cfg.Name, err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return kafkaSettings{}, fmt.Errorf("%s %s: tls.caFile: %s holds no PEM certificate", kind, cfg.Name, cfg.TLS.CAFile)
			}
		}
		s.tls = tc
	}
	return s, nil
}

// newKafkaSink builds the client options now but creates no client, and so
// starts no goroutine, until the first Send: a hub that fails to start after
// building its sinks leaves nothing running.
func newKafkaSink(s kafkaSettings) (*Kafka, error) {
	if s.deliveryTimeout <= 0 {
		s.deliveryTimeout = defaultDeliveryTimeout
	}
	if s.sendTimeout <= 0 {
		s.sendTimeout = defaultSendTimeout
	}
	mech, err := s.auth.saslMechanism()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", s.kind, s.name, err)
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(s.seeds...),
		kgo.ClientID("moat-endpoint-" + s.name),
		kgo.DefaultProduceTopic(s.topic),
		// acks=all is required for idempotence, which franz-go enables by
		// default; spelled out because losing records is not acceptable.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(s.codec),
		kgo.RecordDeliveryTimeout(s.deliveryTimeout),
		// Send produces a whole batch and then waits for it: lingering would
		// only add latency (ProduceSync skips the linger the same way).
		kgo.ProducerLinger(0),
	}
	if s.tls != nil {
		opts = append(opts, kgo.DialTLSConfig(s.tls))
	}
	if mech != nil {
		opts = append(opts, kgo.SASL(mech))
	}
	trouble := &brokerTrouble{}
	opts = append(opts, kgo.WithHooks(trouble))
	opts = append(opts, s.extra...)
	return &Kafka{s: s, opts: opts, trouble: trouble}, nil
}

func (k *Kafka) conn() (*kgo.Client, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil, fmt.Errorf("%s %s: closed", k.s.kind, k.s.name)
	}
	if k.client != nil {
		return k.client, nil
	}
	cl, err := kgo.NewClient(k.opts...)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", k.s.kind, k.s.name, err)
	}
	k.client = cl
	return cl, nil
}

// KafkaKey is a message's record key: the sending device, and its module
// after a '/', so that one device's (or module's) messages land in one
// partition and keep their order, as IoT Hub partitions by device. Messages
// without a device get no key and are spread over the partitions.
func KafkaKey(m message.Message) []byte {
	dev := m.System[message.SysConnectionDevice]
	if dev == "" {
		return nil
	}
	if mod := m.System[message.SysConnectionModule]; mod != "" {
		return []byte(dev + "/" + mod)
	}
	return []byte(dev)
}

// KafkaRecord maps a message to a record. Headers carry the system properties
// under IoT Hub's names (iothub-connection-device-id, message-id,
// content-type, …, as in the webhook's systemProperties), then the
// application properties; each group is sorted by name so a message always
// maps to the same record. The record's timestamp is left to the producer
// (now): franz-go measures the delivery timeout from it, so IoT Hub's
// enqueued time, hours old after an outage, would fail every record at once;
// that time travels in the iothub-enqueuedtime header instead.
func KafkaRecord(topic string, m message.Message) *kgo.Record {
	r := &kgo.Record{Topic: topic, Key: KafkaKey(m), Value: m.Body}
	if r.Value == nil {
		// A null value is a tombstone on compacted topics; an empty body is not.
		r.Value = []byte{}
	}
	r.Headers = make([]kgo.RecordHeader, 0, len(m.System)+len(m.Properties))
	for _, props := range []map[string]string{m.System, m.Properties} {
		for _, k := range slices.Sorted(maps.Keys(props)) {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(props[k])})
		}
	}
	return r
}

// Send implements Sink. It produces the batch and waits for every record's
// acknowledgement, or for ctx, or for the send timeout. It does not use
// ProduceSync because that waits for in-flight requests even after ctx ends.
// When ctx ends (the hub stops) the records stay with the client for Close to
// flush; the Worker resends the batch later, so at worst they are duplicates.
func (k *Kafka) Send(ctx context.Context, batch []message.Message) error {
	if len(batch) == 0 {
		return nil
	}
	cl, err := k.conn()
	if err != nil {
		return err
	}
	start := time.Now()
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, k.s.sendTimeout)
	defer cancel()
	var (
		mu       sync.Mutex
		pending  = len(batch)
		failed   int
		firstErr error
		done     = make(chan struct{})
	)
	promise := func(_ *kgo.Record, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
		}
		if pending--; pending == 0 {
			close(done)
		}
	}
	for _, m := range batch {
		cl.Produce(ctx, KafkaRecord(k.s.topic, m), promise)
	}
	select {
	case <-done:
	case <-ctx.Done():
		if parent.Err() == nil {
			k.discard(cl)
		}
		return fmt.Errorf("%s %s: batch of %d not acknowledged in time%s: %w", k.s.kind, k.s.name, len(batch), k.troubleSince(start), ctx.Err())
	}
	mu.Lock()
	defer mu.Unlock()
	if firstErr != nil {
		return fmt.Errorf("%s %s: %d of %d records not delivered%s: %w", k.s.kind, k.s.name, failed, len(batch), k.troubleSince(start), firstErr)
	}
	return nil
}

// discard closes a client that holds records it cannot deliver or fail.
func (k *Kafka) discard(cl *kgo.Client) {
	k.mu.Lock()
	mine := k.client == cl
	if mine {
		k.client = nil
	}
	k.mu.Unlock()
	if mine { // else Close has it
		cl.Close()
	}
}

func (k *Kafka) troubleSince(t time.Time) string {
	if tr := k.trouble.since(t); tr != "" {
		return " (" + tr + ")"
	}
	return ""
}

// Close implements Sink. It gives records still buffered (from a Send that
// gave up) a few seconds to go out, then closes the client.
func (k *Kafka) Close() error {
	k.mu.Lock()
	cl := k.client
	k.client, k.closed = nil, true
	k.mu.Unlock()
	if cl == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeFlushTimeout)
	defer cancel()
	err := cl.Flush(ctx)
	cl.Close()
	if err != nil {
		return fmt.Errorf("%s %s: flush on close: %w", k.s.kind, k.s.name, err)
	}
	return nil
}
