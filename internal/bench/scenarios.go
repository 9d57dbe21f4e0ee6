package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
	"github.com/moat-iot/moat/internal/serviceapi"
)

// Target names which broker and listener a scenario ran against.
const (
	TargetMoatPlain = "moat-plain"
	TargetMoatTLS   = "moat-tls"
	// TargetMoatTLSHybrid is moat-tls with Go's default TLS client, which
	// offers the hybrid post-quantum key exchange X25519MLKEM768.
	TargetMoatTLSHybrid = "moat-tls-hybrid-kex"
	// The routed targets publish plain MQTT telemetry that routes send to
	// one or three webhook endpoints served by the generator.
	TargetMoatRouted1 = "moat-plain-routed-1"
	TargetMoatRouted3 = "moat-plain-routed-3"
	TargetMosquitto   = "mosquitto"
	// TargetMosquittoSub1 is Mosquitto with its receiver subscribed at QoS 1,
	// so that it also runs the acknowledged outbound flow.
	TargetMosquittoSub1 = "mosquitto-sub-qos1"
)

// Result is one scenario's measurement on one target.
type Result struct {
	Scenario string `json:"scenario"`
	Target   string `json:"target"`

	Devices           int     `json:"devices,omitempty"`
	MessagesPerDevice int     `json:"messagesPerDevice,omitempty"`
	Bytes             int     `json:"bytes,omitempty"`
	QoS               int     `json:"qos"`
	TargetRate        float64 `json:"targetRate,omitempty"` // msg/s asked for; 0 = as fast as possible
	Workers           int     `json:"workers,omitempty"`

	Sent     int64 `json:"sent"`
	Acked    int64 `json:"acked,omitempty"`
	Received int64 `json:"received,omitempty"`
	// Dropped is what the endpoint reported it skipped (Moat's live events
	// stream tells a slow reader how many messages it missed).
	Dropped int64 `json:"dropped,omitempty"`
	// Lost is sent (QoS 0) or acknowledged (QoS 1) minus received minus
	// Dropped: messages that vanished without notice.
	Lost       int64 `json:"lost,omitempty"`
	Duplicates int64 `json:"duplicates,omitempty"`
	Errors     int64 `json:"errors,omitempty"`

	Seconds float64 `json:"seconds"`
	// Rate is the scenario's headline figure per second: acknowledged
	// publishes (QoS 1), delivered messages (QoS 0, C2D), connects, requests.
	Rate float64 `json:"rate"`
	// ReceiveRate is end-to-end deliveries per second at the receiver.
	ReceiveRate float64  `json:"receiveRate,omitempty"`
	Latency     *Latency `json:"latency,omitempty"`
	// P99PerSecond is the p99 latency (ms) of the messages sent in each
	// second of a paced run.
	P99PerSecond []float64 `json:"p99PerSecondMs,omitempty"`
	// AckLatency is, for paced QoS 1 runs, the delay from publish to
	// PUBACK: for Moat the durable write alone, without delivery.
	AckLatency *Latency `json:"ackLatency,omitempty"`

	ServerCPUSeconds float64 `json:"serverCpuSeconds,omitempty"`
	// ServerCPUPerOp is server CPU microseconds per message/connect/request.
	ServerCPUPerOp float64 `json:"serverCpuMicrosPerOp,omitempty"`
	ServerRSSBytes int64   `json:"serverRssBytes,omitempty"`
	// RSSPerDevice is (RSS with the connections − RSS before) / connections.
	RSSPerDevice int64 `json:"rssBytesPerDevice,omitempty"`

	Notes    []string `json:"notes,omitempty"`
	Failure  string   `json:"failure,omitempty"`
	FirstErr string   `json:"firstError,omitempty"`
}

func (r *Result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// deviceKey is the one symmetric key every bench device shares: each SAS token
// is still signed for its own device, which is what the hub verifies.
const deviceKey = "bW9hdGJlbmNoLWRldmljZS1rZXktMDEyMzQ1Njc4OQ=="

func deviceID(i int) string { return fmt.Sprintf("bench-%06d", i) }

// createDevices registers n devices, 100 per bulk request, over workers
// parallel requests.
func createDevices(ctx context.Context, c *serviceapi.Client, n, workers int) (Result, error) {
	res := Result{Scenario: "registry bulk create", Target: TargetMoatTLS, Devices: n, Workers: workers}
	var next atomic.Int64
	var created, failed atomic.Int64
	var firstErr error
	var once sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				from := int(next.Add(registry.MaxBulkOps)) - registry.MaxBulkOps
				if from >= n {
					return
				}
				to := min(n, from+registry.MaxBulkOps)
				ops := make([]registry.BulkOp, 0, to-from)
				for i := from; i < to; i++ {
					ops = append(ops, registry.BulkOp{
						ID: deviceID(i), ImportMode: "create", Status: "enabled",
						Authentication: &registry.Authentication{Type: "sas", SymmetricKey: registry.SymmetricKey{PrimaryKey: deviceKey, SecondaryKey: deviceKey}},
					})
				}
				r, err := c.Bulk(ctx, ops)
				if err == nil && !r.IsSuccessful && len(r.Errors) > 0 {
					err = fmt.Errorf("bulk create: %d errors, first %s: %s", len(r.Errors), r.Errors[0].DeviceID, r.Errors[0].ErrorStatus)
				}
				if err != nil {
					failed.Add(int64(to - from))
					once.Do(func() { firstErr = err })
					continue
				}
				created.Add(int64(to - from))
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Sent = created.Load()
	res.Errors = failed.Load()
	res.Rate = float64(res.Sent) / res.Seconds
	if firstErr != nil {
		res.FirstErr = firstErr.Error()
		return res, fmt.Errorf("create devices: %w", firstErr)
	}
	return res, ctx.Err()
}

// deviceDialer builds CONNECT parameters for bench devices on a hub.
type deviceDialer struct {
	host     string
	addr     string
	tls      *tls.Config
	localIPs []string
}

func (d deviceDialer) config(i int) (DialConfig, error) {
	id := deviceID(i)
	tok, err := sas.Sign(d.host+"/devices/"+id, "", deviceKey, time.Now().Add(2*time.Hour))
	if err != nil {
		return DialConfig{}, err
	}
	cfg := DialConfig{
		Addr: d.addr, TLS: d.tls, ClientID: id,
		Username:     d.host + "/" + id + "/?api-version=2021-04-12",
		Password:     tok,
		KeepAlive:    1177, // IoT Hub's maximum; long enough that idle devices never ping during a run
		CleanSession: true,
	}
	if len(d.localIPs) > 0 {
		cfg.LocalIP = d.localIPs[i%len(d.localIPs)]
	}
	return cfg, nil
}

// D2CParams is one device-to-cloud run.
type D2CParams struct {
	Devices  int
	Messages int // per device
	Bytes    int
	QoS      byte
	Window   int     // QoS 1 publishes in flight per device
	Rate     float64 // total msg/s; 0 = as fast as the broker acknowledges
	Timeout  time.Duration
}

// d2cTarget is where device-to-cloud telemetry goes and how it is received.
type d2cTarget struct {
	name string
	// dial returns the CONNECT parameters of device i.
	dial func(i int) (DialConfig, error)
	// topic is device i's telemetry topic.
	topic func(i int) string
	// receive subscribes the tracker to the endpoint; it returns once
	// messages sent from then on will be seen, and a func that stops it.
	receive func(ctx context.Context, t *tracker, qos byte) (stop func(), err error)
	// subQoS is the QoS the receiver asks for (MQTT receivers only).
	subQoS byte
	pid    int
}

// runD2C publishes Devices × Messages stamped messages and measures how many
// arrive at the endpoint, how fast and how late.
func runD2C(ctx context.Context, tg d2cTarget, p D2CParams) Result {
	res := Result{Scenario: fmt.Sprintf("d2c qos%d", p.QoS), Target: tg.name, Devices: p.Devices, MessagesPerDevice: p.Messages, Bytes: p.Bytes, QoS: int(p.QoS), TargetRate: p.Rate}
	if p.Rate > 0 {
		res.Scenario += " paced"
	}
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	tr := newTracker(p.Devices, p.Messages)
	stopRecv, err := tg.receive(ctx, tr, tg.subQoS)
	if err != nil {
		res.Failure = fmt.Sprintf("start receiver: %v", err)
		return res
	}
	defer stopRecv()

	conns := make([]*Conn, p.Devices)
	window := 0
	if p.QoS == 1 {
		window = p.Window
	}
	if err := parallel(ctx, p.Devices, 32, func(i int) error {
		cfg, err := tg.dial(i)
		if err != nil {
			return err
		}
		c, err := Dial(ctx, cfg, window)
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		conns[i] = c
		if p.Rate > 0 && p.QoS == 1 {
			c.TimeAcks(p.Messages)
		}
		c.Start(nil)
		return nil
	}); err != nil {
		res.Failure = fmt.Sprintf("connect devices: %v", err)
		closeAll(conns)
		return res
	}
	defer func() {
		for _, c := range conns {
			_ = c.Disconnect()
		}
	}()

	before, _ := readUsage(tg.pid)
	selfBefore := readSelf()
	var sent, errs atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	fail := func(err error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	var wg sync.WaitGroup
	if p.Rate > 0 {
		for k := range min(pacers, len(conns)) {
			wg.Go(func() {
				paceLoop(ctx, conns, tg.topic, k, pacers, p, start, &sent, fail)
			})
		}
	} else {
		for i, c := range conns {
			wg.Go(func() {
				if err := publishLoop(ctx, c, i, tg.topic(i), p, &sent); err != nil {
					fail(err)
				}
			})
		}
	}
	wg.Wait()
	sendEnd := time.Now()
	var acked int64
	for _, c := range conns {
		acked += c.Acked()
	}
	want := sent.Load()
	if p.QoS == 1 {
		want = acked
	}
	deadline, _ := ctx.Deadline()
	tr.waitFor(want, 3*time.Second, deadline)
	after, _ := readUsage(tg.pid)
	selfAfter := readSelf()

	res.Sent, res.Acked, res.Errors = sent.Load(), acked, errs.Load()
	if v := firstErr.Load(); v != nil {
		res.FirstErr = v.(string)
	}
	res.Received, res.Duplicates, res.Dropped = tr.unique.Load(), tr.dups.Load(), tr.dropped.Load()
	res.Lost = max(0, want-res.Received-res.Dropped)
	res.Seconds = sendEnd.Sub(start).Seconds()
	last := tr.lastReceipt()
	if res.Received > 0 && last.After(start) {
		res.ReceiveRate = float64(res.Received) / last.Sub(start).Seconds()
	}
	if p.QoS == 1 {
		res.Rate = float64(acked) / res.Seconds
	} else {
		res.Rate = res.ReceiveRate
	}
	l := tr.latency()
	res.Latency = &l
	if p.Rate > 0 {
		if ps := tr.perSecondP99(100); len(ps) > 0 {
			res.P99PerSecond = ps
			sorted := slices.Sorted(slices.Values(ps))
			res.note("p99 of each second's messages: median %.1f ms, best %.1f, worst %.1f (%d seconds)", sorted[len(sorted)/2], sorted[0], sorted[len(sorted)-1], len(sorted))
		}
		var acks []int64
		for _, c := range conns {
			if c.InFlight() == 0 {
				acks = append(acks, c.AckLatencies()...)
			}
		}
		if len(acks) > 0 {
			l := summarize(acks)
			res.AckLatency = &l
			res.note("publish to PUBACK: p50 %.2f ms, p99 %.2f ms", l.P50, l.P99)
		}
		if p50, ok := schedQuantile(selfBefore, selfAfter, 0.5); ok {
			p99, _ := schedQuantile(selfBefore, selfAfter, 0.99)
			res.note("generator: %.0f%% of a core; its goroutines waited for a core p50 ≤ %.2f ms, p99 ≤ %.2f ms", 100*(selfAfter.cpu-selfBefore.cpu).Seconds()/time.Since(start).Seconds(), p50, p99)
		}
	}
	res.ServerCPUSeconds = (after.CPU - before.CPU).Seconds()
	if res.Received > 0 {
		res.ServerCPUPerOp = res.ServerCPUSeconds * 1e6 / float64(res.Received)
	}
	res.ServerRSSBytes = after.RSS
	if f := tr.foreign.Load(); f > 0 {
		res.note("%d receipts carried no recognisable stamp", f)
	}
	return res
}

// publishLoop sends one device's messages as fast as its window allows and
// waits until every QoS 1 publish is acknowledged.
func publishLoop(ctx context.Context, c *Conn, dev int, topic string, p D2CParams, sent *atomic.Int64) error {
	buf := make([]byte, 0, p.Bytes+64)
	for seq := range p.Messages {
		buf = appendStamp(buf[:0], stamp{Device: dev, Seq: seq, Sent: time.Now().UnixNano()}, p.Bytes)
		if err := c.Publish(ctx, topic, buf, p.QoS); err != nil {
			return err
		}
		sent.Add(1)
	}
	return drain(ctx, c)
}

// Paced runs send from a few pacer goroutines, each for a share of the
// devices, rather than from one goroutine per device woken by a timer for
// every message: the generator shares the hub's cores, and the pacers cut
// its CPU at 30,000 msg/s by about a tenth (from 53–61 % of a core to 47–53 %
// in four pairs of runs). A pacer sends its devices' messages in the order
// they fall due; one due within paceSlack of now goes at once, so that a
// pacer sleeps only between bursts of a few messages.
const (
	pacers    = 4
	paceSlack = 250 * time.Microsecond
)

// paceLoop sends the messages of devices k, k+n, k+2n, … at p.Rate in total:
// device d's message seq falls due at start + (d/Devices + seq) × interval,
// so that each device sends every interval and the devices' sends are spread
// evenly across it. A device whose publish fails stops sending; the others go
// on. It then waits until every publish of its devices is acknowledged.
func paceLoop(ctx context.Context, conns []*Conn, topic func(int) string, k, n int, p D2CParams, start time.Time, sent *atomic.Int64, fail func(error)) {
	interval := time.Duration(float64(time.Second) * float64(p.Devices) / p.Rate)
	var devs []int
	var topics []string
	for d := k; d < len(conns); d += n {
		devs = append(devs, d)
		topics = append(topics, topic(d))
	}
	dead := make([]bool, len(devs))
	buf := make([]byte, 0, p.Bytes+64)
	for seq := range p.Messages {
		for j, d := range devs {
			if dead[j] {
				continue
			}
			due := start.Add(interval*time.Duration(seq) + interval*time.Duration(d)/time.Duration(p.Devices))
			if wait := time.Until(due); wait > paceSlack {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					fail(ctx.Err())
					return
				}
			}
			c := conns[d]
			buf = appendStamp(buf[:0], stamp{Device: d, Seq: seq, Sent: time.Now().UnixNano()}, p.Bytes)
			err := c.Publish(ctx, topics[j], buf, p.QoS)
			if err == nil {
				sent.Add(1)
				err = c.Flush()
			}
			if err != nil {
				dead[j] = true
				fail(fmt.Errorf("device %d: %w", d, err))
			}
		}
	}
	for j, d := range devs {
		if !dead[j] {
			if err := drain(ctx, conns[d]); err != nil {
				fail(fmt.Errorf("device %d: %w", d, err))
			}
		}
	}
}

// drain flushes c and waits until its QoS 1 publishes are all acknowledged.
func drain(ctx context.Context, c *Conn) error {
	if err := c.Flush(); err != nil {
		return err
	}
	for c.InFlight() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d publishes not acknowledged: %w", c.InFlight(), ctx.Err())
		case <-c.done:
			return fmt.Errorf("connection closed with %d publishes unacknowledged: %v", c.InFlight(), c.readErr)
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// parallel runs fn(0..n-1) on up to k goroutines and returns the first error.
func parallel(ctx context.Context, n, k int, fn func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range min(k, n) {
		wg.Go(func() {
			for !failed.Load() && ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					failed.Store(true)
					once.Do(func() { first = err })
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

func closeAll(conns []*Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// moatEvents subscribes a tracker to the hub's live events stream. It reads
// the NDJSON lines itself rather than through serviceapi.Client.MonitorEvents
// so that the receiver, which shares the cores with the hub, only scans for
// the stamp instead of decoding every record.
func (h *moatHub) receiveEvents(ctx context.Context, t *tracker, _ byte) (func(), error) {
	_, hc, err := h.serviceClient(1)
	if err != nil {
		return nil, err
	}
	tok, err := sas.Sign(h.ip, "iothubowner", ownerKey(h.connString), time.Now().Add(time.Hour))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+h.https+"/moat/events?"+url.Values{"api-version": {serviceapi.APIVersion}}.Encode(), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Authorization", tok)
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open events stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("open events stream: HTTP %s", resp.Status)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer resp.Body.Close()
		br := bufio.NewReaderSize(resp.Body, 256*1024)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				return
			}
			now := time.Now()
			if s, ok := findStamp(line); ok {
				t.record(s, now)
				continue
			}
			var gap struct {
				Dropped int64 `json:"dropped"`
			}
			if json.Unmarshal(line, &gap) == nil && gap.Dropped > 0 {
				t.dropped.Add(gap.Dropped)
			}
		}
	}()
	return func() { cancel(); <-done }, nil
}

func ownerKey(cs string) string {
	p, err := serviceapi.ParseConnectionString(cs)
	if err != nil {
		return ""
	}
	return p.SharedAccessKey
}

// receiveMQTT subscribes a tracker to filter on an MQTT broker.
func receiveMQTT(addr, filter string) func(ctx context.Context, t *tracker, qos byte) (func(), error) {
	return func(ctx context.Context, t *tracker, qos byte) (func(), error) {
		c, err := Dial(ctx, DialConfig{Addr: addr, ClientID: fmt.Sprintf("bench-sub-%d", rand.Uint32()), CleanSession: true, KeepAlive: 0}, 0)
		if err != nil {
			return nil, fmt.Errorf("subscriber: %w", err)
		}
		done := c.Start(func(_, payload []byte) {
			if s, ok := findStamp(payload); ok {
				t.record(s, time.Now())
			} else {
				t.foreign.Add(1)
			}
		})
		if err := c.Subscribe(ctx, filter, qos); err != nil {
			c.Close()
			return nil, err
		}
		return func() { _ = c.Disconnect(); <-done }, nil
	}
}

// runConnectStorm connects and disconnects total devices over k parallel
// dialers and reports completed CONNECT/CONNACK exchanges per second.
func runConnectStorm(ctx context.Context, d deviceDialer, target string, total, k, devices int, pid int, timeout time.Duration) Result {
	res := Result{Scenario: "connect storm", Target: target, Workers: k, Devices: devices}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var next, ok, failed atomic.Int64
	var firstErr atomic.Value
	lat := make([][]int64, k)
	before, _ := readUsage(pid)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range k {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				t0 := time.Now()
				cfg, err := d.config(i % devices)
				if err == nil {
					var c *Conn
					c, err = Dial(ctx, cfg, 0)
					if err == nil {
						lat[w] = append(lat[w], time.Since(t0).Nanoseconds())
						_ = c.Disconnect()
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	after, _ := readUsage(pid)
	res.Seconds = time.Since(start).Seconds()
	res.Sent, res.Errors = ok.Load(), failed.Load()
	res.Rate = float64(res.Sent) / res.Seconds
	var all []int64
	for _, l := range lat {
		all = append(all, l...)
	}
	l := summarize(all)
	res.Latency = &l
	res.ServerCPUSeconds = (after.CPU - before.CPU).Seconds()
	if res.Sent > 0 {
		res.ServerCPUPerOp = res.ServerCPUSeconds * 1e6 / float64(res.Sent)
	}
	if v := firstErr.Load(); v != nil {
		res.FirstErr = v.(string)
	}
	if res.Sent < int64(total) {
		res.Failure = fmt.Sprintf("%d of %d connects completed", res.Sent, total)
	}
	return res
}

// runIdle holds connections open in steps (e.g. 10k, then 100k) and reports
// the hub's resident memory per connected device at each step.
func runIdle(ctx context.Context, h *moatHub, d deviceDialer, target string, steps []int, k int, timeout time.Duration) []Result {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	base := settledRSS(h.pid())
	selfBase, _ := readUsage(os.Getpid())
	var conns []*Conn
	defer func() { closeAll(conns) }()
	var out []Result
	for _, n := range steps {
		res := Result{Scenario: fmt.Sprintf("idle %d", n), Target: target, Devices: n, Workers: k}
		// Both ends of every connection live on this machine: stop short of
		// exhausting memory other work on it needs.
		perConn := int64(200 * 1024)
		if len(conns) > 0 {
			hu, _ := readUsage(h.pid())
			su, _ := readUsage(os.Getpid())
			perConn = max(perConn/4, (hu.RSS-base+su.RSS-selfBase.RSS)/int64(len(conns)))
		}
		if avail := memAvailable(); avail > 0 {
			if fit := len(conns) + int(avail/2/perConn); fit < n {
				res.note("capped at %d connections (of %d): at about %d KiB per connection for both ends, more would use over half of the %d MiB available", fit, n, perConn>>10, avail>>20)
				n = fit
				res.Devices = n
			}
		}
		from := len(conns)
		more := make([]*Conn, n-from)
		start := time.Now()
		err := parallel(ctx, n-from, k, func(i int) error {
			cfg, err := d.config(from + i)
			if err != nil {
				return err
			}
			c, err := Dial(ctx, cfg, 0)
			if err != nil {
				return fmt.Errorf("device %d: %w", from+i, err)
			}
			more[i] = c
			return nil
		})
		for _, c := range more {
			if c != nil {
				conns = append(conns, c)
			}
		}
		res.Seconds = time.Since(start).Seconds()
		res.Sent = int64(len(conns))
		res.Rate = float64(len(conns)-from) / res.Seconds
		if err != nil {
			res.Failure = fmt.Sprintf("only %d of %d connected: %v", len(conns), n, err)
			out = append(out, res)
			return out
		}
		// The hub counts a connection just after its CONNACK is written,
		// so the last few may be counted a moment after Dial returned.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			v, err := scrapeMetric(ctx, h.metrics, "moat_connected_devices")
			if err != nil {
				break
			}
			res.Received = int64(v)
			if int(v) == len(conns) {
				break
			}
			if time.Now().After(deadline) {
				res.note("hub reports %d connected devices", int(v))
				break
			}
		}
		if !waitQuiet(ctx, h.metrics) {
			res.note("the hub was still allocating over %d MiB/s when its memory was read", quietAllocRate>>20)
		}
		rss := settledRSS(h.pid())
		res.ServerRSSBytes = rss
		res.RSSPerDevice = (rss - base) / int64(len(conns))
		res.note("hub RSS %d MiB before connections, %d MiB with %d", base>>20, rss>>20, len(conns))
		out = append(out, res)
	}
	return out
}

// quietAllocRate is the allocation rate under which the hub counts as idle:
// under its GC pacer's threshold for a busy hub (gcpace.Busy: 12.8 MiB/s with
// the default headroom), at which it collects what the busy period left.
const quietAllocRate = 8 << 20

// waitQuiet waits (up to 30 s) until the hub allocates under quietAllocRate,
// read from its metrics a second apart: after a connect storm the hub still
// records connection states and routes the connection events for a while.
func waitQuiet(ctx context.Context, metricsAddr string) bool {
	const name = "go_memstats_alloc_bytes_total"
	prev, err := scrapeMetric(ctx, metricsAddr, name)
	if err != nil {
		return false
	}
	for range 30 {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
		v, err := scrapeMetric(ctx, metricsAddr, name)
		if err != nil {
			return false
		}
		if v-prev < quietAllocRate {
			return true
		}
		prev = v
	}
	return false
}

// settledRSS waits for the hub's resident memory to settle and returns it:
// unchanged within 1 % over eight seconds, or after 40 s. Eight seconds
// because the hub collects the garbage of a busy period (such as a connect
// storm) only after it has seen a quiet interval of up to a second, and two
// more collections follow three seconds apart, which shrink the stacks of
// the connections that went quiet (gcpace.SettleCollections); an earlier
// reading would count that garbage and those stacks as memory per device.
func settledRSS(pid int) int64 {
	const step, window, limit = 500 * time.Millisecond, 16, 80
	var samples []int64
	for range limit {
		u, err := readUsage(pid)
		if err != nil {
			return 0
		}
		samples = append(samples, u.RSS)
		if len(samples) > window {
			last := samples[len(samples)-window-1:]
			if steady(last, 0.01) {
				return u.RSS
			}
		}
		time.Sleep(step)
	}
	return samples[len(samples)-1]
}

// steady reports whether all of xs lie within frac of their maximum.
func steady(xs []int64, frac float64) bool {
	lo, hi := xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return float64(hi-lo) <= frac*float64(hi)
}

// runTwins reads (update false) or patches twins of the first devices devices
// from workers parallel REST clients for d.
func runTwins(ctx context.Context, h *moatHub, update bool, devices, workers int, d time.Duration) Result {
	res := Result{Scenario: "twin reads", Target: TargetMoatTLS, Devices: devices, Workers: workers}
	if update {
		res.Scenario = "twin updates"
	}
	c, _, err := h.serviceClient(workers)
	if err != nil {
		res.Failure = err.Error()
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	lat := make([][]int64, workers)
	before, _ := readUsage(h.pid())
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				id := deviceID((w + i*workers) % devices)
				t0 := time.Now()
				var err error
				if update {
					patch := `{"properties":{"desired":{"bench":` + strconv.Itoa(i) + `,"worker":` + strconv.Itoa(w) + `}}}`
					_, err = c.PatchTwin(ctx, id, "", json.RawMessage(patch), "")
				} else {
					_, err = c.GetTwin(ctx, id, "")
				}
				if ctx.Err() != nil {
					return // the run's time is up; this call did not finish
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				lat[w] = append(lat[w], time.Since(t0).Nanoseconds())
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	after, _ := readUsage(h.pid())
	res.Seconds = time.Since(start).Seconds()
	res.Sent, res.Errors = ok.Load(), failed.Load()
	res.Rate = float64(res.Sent) / res.Seconds
	var all []int64
	for _, l := range lat {
		all = append(all, l...)
	}
	l := summarize(all)
	res.Latency = &l
	res.ServerCPUSeconds = (after.CPU - before.CPU).Seconds()
	if res.Sent > 0 {
		res.ServerCPUPerOp = res.ServerCPUSeconds * 1e6 / float64(res.Sent)
	}
	if v := firstErr.Load(); v != nil {
		res.FirstErr = v.(string)
	}
	return res
}

// runC2D sends total cloud-to-device messages over REST from workers senders
// to devices connected devices and measures their delivery over MQTT.
func runC2D(ctx context.Context, h *moatHub, d deviceDialer, devices, total, workers int, timeout time.Duration) Result {
	res := Result{Scenario: "c2d", Target: TargetMoatPlain, Devices: devices, Workers: workers, QoS: 1}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	perDevice := (total + devices - 1) / devices
	res.MessagesPerDevice = perDevice
	tr := newTracker(devices, perDevice)
	conns := make([]*Conn, devices)
	err := parallel(ctx, devices, 32, func(i int) error {
		cfg, err := d.config(i)
		if err != nil {
			return err
		}
		c, err := Dial(ctx, cfg, 0)
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		conns[i] = c
		c.Start(func(_, payload []byte) {
			if s, ok := findStamp(payload); ok {
				tr.record(s, time.Now())
			} else {
				tr.foreign.Add(1)
			}
		})
		return c.Subscribe(ctx, "devices/"+deviceID(i)+"/messages/devicebound/#", 1)
	})
	defer closeAll(conns)
	if err != nil {
		res.Failure = fmt.Sprintf("connect devices: %v", err)
		return res
	}
	c, _, err := h.serviceClient(workers)
	if err != nil {
		res.Failure = err.Error()
		return res
	}
	var next, sent, failed, full atomic.Int64
	var firstErr atomic.Value
	before, _ := readUsage(h.pid())
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var buf []byte
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				dev, seq := i%devices, i/devices
				for attempt := 0; ctx.Err() == nil; attempt++ {
					buf = appendStamp(buf[:0], stamp{Device: dev, Seq: seq, Sent: time.Now().UnixNano()}, 64)
					err := c.SendC2D(ctx, deviceID(dev), message.Message{Body: buf})
					var ce *errcode.Error
					if err != nil && errors.As(err, &ce) && ce.Code == errcode.DeviceMaxQueueDepthExceeded && attempt < 200 {
						full.Add(1)
						time.Sleep(5 * time.Millisecond)
						continue
					}
					if err != nil {
						if ctx.Err() == nil {
							failed.Add(1)
							firstErr.CompareAndSwap(nil, err.Error())
						}
					} else {
						sent.Add(1)
					}
					break
				}
			}
		})
	}
	wg.Wait()
	sendEnd := time.Now()
	deadline, _ := ctx.Deadline()
	tr.waitFor(sent.Load(), 5*time.Second, deadline)
	after, _ := readUsage(h.pid())
	res.Sent, res.Errors = sent.Load(), failed.Load()
	res.Received, res.Duplicates = tr.unique.Load(), tr.dups.Load()
	res.Lost = max(0, res.Sent-res.Received)
	last := tr.lastReceipt()
	res.Seconds = sendEnd.Sub(start).Seconds()
	if res.Received > 0 && last.After(start) {
		res.ReceiveRate = float64(res.Received) / last.Sub(start).Seconds()
	}
	res.Rate = res.ReceiveRate
	l := tr.latency()
	res.Latency = &l
	res.ServerCPUSeconds = (after.CPU - before.CPU).Seconds()
	if res.Received > 0 {
		res.ServerCPUPerOp = res.ServerCPUSeconds * 1e6 / float64(res.Received)
	}
	if f := tr.foreign.Load(); f > 0 {
		res.note("%d receipts carried no recognisable stamp", f)
	}
	if n := full.Load(); n > 0 {
		res.note("%d sends refused with DeviceMaxQueueDepthExceeded (50 pending) and retried", n)
	}
	if v := firstErr.Load(); v != nil {
		res.FirstErr = v.(string)
	}
	return res
}

// localIPs are the source addresses idle connections spread over (each gives
// about 28k ephemeral ports towards one listener).
func localIPs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = net.IPv4(127, 0, 1, byte(i+1)).String()
	}
	return out
}
