package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

// Config is one run of the suite.
type Config struct {
	MoatBin      string // path of the built `moat` binary
	MosquittoBin string // "" skips the Mosquitto comparison
	OutDir       string // where results.json and results.md go
	WorkDir      string // temporary data; "" = a new directory under os.TempDir
	Quick        bool   // a small smoke run (well under a minute)
	HubIP        string // loopback address of the hub (default 127.0.0.50)
	MosquittoIP  string // loopback address of Mosquitto (default 127.0.0.51)
	HTTPSPort    int    // the hub's REST port (default 443)
	// Only, when set, runs just the scenarios whose label it matches:
	// "d2c qos0|1 TARGET", "paced TARGET" (needs its d2c qos1 run unless PacedRate is set),
	// "twin reads", "twin updates", "c2d", "storm TARGET", "idle".
	Only *regexp.Regexp
	// PacedRate, when above zero, paces every latency run at this many
	// messages per second instead of half of each target's own peak, so
	// that latencies of different builds or machines compare at one rate.
	PacedRate float64
	// PacedSeconds is how long each paced run lasts (default 5 s, 1 s in
	// quick mode); longer runs steady a noisy machine's tail.
	PacedSeconds float64
	Log          io.Writer
}

// Sizes are the suite's knobs; Standard and Quick give the two presets.
type Sizes struct {
	D2CDevices, D2CMessages, D2CBytes, D2CWindow int
	StormConnects, StormDialers                  int
	IdleSteps                                    []int
	IdleDialers                                  int
	TwinDevices, TwinWorkers                     int
	TwinDuration                                 time.Duration
	C2DDevices, C2DMessages, C2DWorkers          int
	ScenarioTimeout                              time.Duration
}

// StandardSizes is what `make bench` runs.
func StandardSizes() Sizes {
	return Sizes{
		D2CDevices: 100, D2CMessages: 2000, D2CBytes: 256, D2CWindow: 32,
		StormConnects: 5000, StormDialers: 64,
		IdleSteps: []int{10_000, 100_000}, IdleDialers: 64,
		TwinDevices: 1000, TwinWorkers: 32, TwinDuration: 10 * time.Second,
		C2DDevices: 100, C2DMessages: 10_000, C2DWorkers: 16,
		ScenarioTimeout: 120 * time.Second,
	}
}

// QuickSizes is the smoke-test preset.
func QuickSizes() Sizes {
	return Sizes{
		D2CDevices: 10, D2CMessages: 300, D2CBytes: 256, D2CWindow: 16,
		StormConnects: 200, StormDialers: 16,
		IdleSteps: []int{200, 1000}, IdleDialers: 16,
		TwinDevices: 100, TwinWorkers: 8, TwinDuration: time.Second,
		C2DDevices: 10, C2DMessages: 200, C2DWorkers: 4,
		ScenarioTimeout: 30 * time.Second,
	}
}

// Report is everything one run measured.
type Report struct {
	Date time.Time `json:"date"`
	// PacedRate is the fixed rate of the latency runs, 0 when they ran at
	// half of each target's peak.
	PacedRate float64  `json:"pacedRate,omitempty"`
	Mode      string   `json:"mode"`
	Machine   Machine  `json:"machine"`
	Mosquitto string   `json:"mosquitto,omitempty"`
	FileLimit uint64   `json:"fileLimit"`
	Seconds   float64  `json:"seconds"`
	Results   []Result `json:"results"`
	Summary   []Row    `json:"summary"`
	Caveats   []string `json:"caveats"`
}

func (r *Report) find(scenario, target string) *Result {
	for i := range r.Results {
		if r.Results[i].Scenario == scenario && r.Results[i].Target == target {
			return &r.Results[i]
		}
	}
	return nil
}

// profiling says whether MOATBENCH_PPROF=1 asks for the hub's pprof
// endpoints (on its loopback metrics listener), to profile it under load.
func profiling() bool { return os.Getenv("MOATBENCH_PPROF") == "1" }

// profilingArgs turns on the hub's pprof endpoints (on its loopback metrics
// listener) when MOATBENCH_PPROF=1, for the hubs the suite starts without the
// routed configuration.
func profilingArgs(work string) ([]string, error) {
	if !profiling() {
		return nil, nil
	}
	path := filepath.Join(work, "profiling.json")
	if err := os.WriteFile(path, []byte(`{"moat":{"profiling":true}}`), 0o600); err != nil {
		return nil, fmt.Errorf("profiling config: %w", err)
	}
	return []string{"--config", path}, nil
}

// ScenarioPacedAtMosquitto is a routed run paced at Mosquitto's paced rate.
const ScenarioPacedAtMosquitto = "d2c qos1 paced at mosquitto's rate"

// Run starts the hub (and Mosquitto), runs every scenario and returns the
// report; WriteReport stores it. A scenario that fails is recorded with its
// Failure and the suite carries on.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	sizes := StandardSizes()
	mode := "standard"
	if cfg.Quick {
		sizes, mode = QuickSizes(), "quick"
	}
	if cfg.HubIP == "" {
		cfg.HubIP = "127.0.0.50"
	}
	if cfg.MosquittoIP == "" {
		cfg.MosquittoIP = "127.0.0.51"
	}
	if cfg.HTTPSPort == 0 {
		cfg.HTTPSPort = 443
	}
	logw := cfg.Log
	if logw == nil {
		logw = io.Discard
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(logw, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	if _, err := os.Stat(cfg.MoatBin); err != nil {
		return nil, fmt.Errorf("moat binary: %w", err)
	}
	work := cfg.WorkDir
	if work == "" {
		d, err := os.MkdirTemp("", "moatbench-")
		if err != nil {
			return nil, fmt.Errorf("work directory: %w", err)
		}
		defer os.RemoveAll(d)
		work = d
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, fmt.Errorf("work directory: %w", err)
	}
	started := time.Now()
	rep := &Report{Date: started.UTC(), Mode: mode, Machine: describeMachine(), PacedRate: cfg.PacedRate}
	if cfg.PacedRate > 0 {
		rep.Caveats = append(rep.Caveats, fmt.Sprintf("latency runs paced at %.0f msg/s (--paced-rate), not at half of each target's peak: the latency bar is not judged", cfg.PacedRate))
	}
	maxIdle := sizes.IdleSteps[len(sizes.IdleSteps)-1]
	rep.FileLimit = raiseFileLimit(uint64(2*maxIdle + 10_000))
	if lim := int(rep.FileLimit) - 2_000; lim < maxIdle {
		// Both ends of every connection are in this process or the hub,
		// each with its own limit, so the smaller bounds the idle test.
		var steps []int
		for _, s := range sizes.IdleSteps {
			steps = append(steps, min(s, lim))
		}
		sizes.IdleSteps = steps
		maxIdle = steps[len(steps)-1]
		rep.Caveats = append(rep.Caveats, fmt.Sprintf("open-file limit %d (could not raise it): idle steps capped at %d", rep.FileLimit, lim))
	}

	hubData := filepath.Join(work, "hub")
	fan, err := startWebhookFanIn(cfg.HubIP)
	if err != nil {
		return nil, err
	}
	defer fan.stop()
	routedCfg := filepath.Join(work, "routed.json")
	if err := writeRoutedConfig(routedCfg, fan.urls); err != nil {
		return nil, err
	}
	logf("starting hub %s on %s", cfg.MoatBin, cfg.HubIP)
	h, err := startHub(ctx, cfg.MoatBin, hubData, cfg.HubIP, cfg.HTTPSPort, filepath.Join(work, "hub.log"), "--config", routedCfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if h != nil {
			h.stop()
		}
	}()

	svc, _, err := h.serviceClient(8)
	if err != nil {
		return nil, err
	}
	nDevices := max(maxIdle, sizes.D2CDevices, sizes.TwinDevices, sizes.C2DDevices, min(sizes.StormConnects, maxIdle))
	logf("creating %d devices", nDevices)
	cr, err := createDevices(ctx, svc, nDevices, 4)
	rep.Results = append(rep.Results, cr)
	if err != nil {
		return rep, err
	}
	logf("  %.0f devices/s", cr.Rate)

	plain := deviceDialer{host: h.ip, addr: h.mqttPlain}
	secure := deviceDialer{host: h.ip, addr: h.mqttTLS, tls: h.tlsConf}
	moatTarget := func(name string, d deviceDialer) d2cTarget {
		return d2cTarget{
			name: name, dial: d.config, pid: h.pid(),
			topic:   func(i int) string { return "devices/" + deviceID(i) + "/messages/events/" },
			receive: h.receiveEvents,
		}
	}
	targets := []d2cTarget{moatTarget(TargetMoatPlain, plain), moatTarget(TargetMoatTLS, secure)}
	for _, n := range []int{1, routedEndpoints} {
		tg := moatTarget(fmt.Sprintf("%s-routed-%d", TargetMoatPlain, n), plain)
		tg.topic = func(i int) string { return "devices/" + deviceID(i) + "/messages/events/fan=" + strconv.Itoa(n) }
		tg.receive = fan.receive(n)
		targets = append(targets, tg)
	}

	var mosq *server
	var sub1 *d2cTarget
	if cfg.MosquittoBin != "" {
		if out, err := exec.Command(cfg.MosquittoBin, "-h").Output(); err == nil || len(out) > 0 {
			rep.Mosquitto = firstLine(string(out))
		}
		mdir := filepath.Join(work, "mosquitto")
		if err := os.MkdirAll(mdir, 0o755); err != nil {
			return rep, err
		}
		var addr string
		mosq, addr, err = startMosquitto(ctx, cfg.MosquittoBin, mdir, cfg.MosquittoIP, 1883)
		if err != nil {
			return rep, err
		}
		defer func() { mosq.stop() }()
		mt := d2cTarget{
			name: TargetMosquitto, pid: mosq.pid(),
			dial: func(i int) (DialConfig, error) {
				return DialConfig{Addr: addr, ClientID: deviceID(i), CleanSession: true, KeepAlive: 1177}, nil
			},
			topic:   func(i int) string { return "bench/" + deviceID(i) },
			receive: receiveMQTT(addr, "bench/#"),
		}
		targets = append(targets, mt)
		mt.name, mt.subQoS = TargetMosquittoSub1, 1
		sub1 = &mt
	} else {
		rep.Caveats = append(rep.Caveats, "Mosquitto not run: no ratios")
	}

	// Device-to-cloud: every target at QoS 0 and QoS 1 as fast as it goes,
	// then QoS 1 paced at half of that target's peak for latency.
	selected := func(label string) bool { return cfg.Only == nil || cfg.Only.MatchString(label) }
	quiet := func() {
		pids := []int{h.pid()}
		if mosq != nil {
			pids = append(pids, mosq.pid())
		}
		settle(ctx, 15*time.Second, pids...)
	}
	for _, qos := range []byte{0, 1} {
		for _, tg := range targets {
			if !selected(fmt.Sprintf("d2c qos%d %s", qos, tg.name)) {
				continue
			}
			p := D2CParams{Devices: sizes.D2CDevices, Messages: sizes.D2CMessages, Bytes: sizes.D2CBytes, QoS: qos, Window: sizes.D2CWindow, Timeout: sizes.ScenarioTimeout}
			logf("d2c qos%d on %s: %d devices x %d messages x %d B", qos, tg.name, p.Devices, p.Messages, p.Bytes)
			quiet()
			r := runD2C(ctx, tg, p)
			logResult(logf, r)
			rep.Results = append(rep.Results, r)
		}
	}
	if sub1 != nil && selected("d2c qos1 "+sub1.name) {
		p := D2CParams{Devices: sizes.D2CDevices, Messages: sizes.D2CMessages, Bytes: sizes.D2CBytes, QoS: 1, Window: sizes.D2CWindow, Timeout: sizes.ScenarioTimeout}
		logf("d2c qos1 on %s", sub1.name)
		quiet()
		r := runD2C(ctx, *sub1, p)
		logResult(logf, r)
		rep.Results = append(rep.Results, r)
	}
	// A paced run lasts about five seconds (one in quick mode, or
	// --paced-seconds) at its rate: pacedMessages is each device's share.
	pacedSecs := 5.0
	if cfg.Quick {
		pacedSecs = 1
	}
	if cfg.PacedSeconds > 0 {
		pacedSecs = cfg.PacedSeconds
	}
	pacedMessages := func(rate float64) int { return max(20, int(rate*pacedSecs)/sizes.D2CDevices) }
	for _, tg := range targets {
		if !selected("paced " + tg.name) {
			continue
		}
		// Peak is what arrives end to end: pacing at half of the PUBACK rate
		// would only measure the backlog of a receiver that cannot keep up.
		// A fixed rate needs no peak run.
		rate := cfg.PacedRate
		if rate <= 0 {
			peak := rep.find("d2c qos1", tg.name)
			if peak == nil || peak.Rate <= 0 || peak.ReceiveRate <= 0 {
				continue
			}
			rate = min(peak.Rate, peak.ReceiveRate) / 2
		}
		p := D2CParams{Devices: sizes.D2CDevices, Messages: pacedMessages(rate), Bytes: sizes.D2CBytes, QoS: 1, Window: sizes.D2CWindow, Rate: rate, Timeout: sizes.ScenarioTimeout}
		logf("d2c qos1 paced on %s at %.0f msg/s", tg.name, rate)
		quiet()
		r := runD2C(ctx, tg, p)
		logResult(logf, r)
		rep.Results = append(rep.Results, r)
	}
	// Half of Moat's peak is a higher rate than half of Mosquitto's: the
	// routed latency is also taken at Mosquitto's paced rate, for a like
	// for like comparison. With a fixed --paced-rate every target already
	// ran at one rate, and this run would repeat the routed one.
	if m := rep.find("d2c qos1 paced", TargetMosquitto); m != nil && m.Rate > 0 && cfg.PacedRate == 0 {
		for _, tg := range targets {
			if tg.name != TargetMoatRouted1 || !selected("paced "+tg.name) {
				continue
			}
			p := D2CParams{Devices: sizes.D2CDevices, Messages: pacedMessages(m.Rate), Bytes: sizes.D2CBytes, QoS: 1, Window: sizes.D2CWindow, Rate: m.Rate, Timeout: sizes.ScenarioTimeout}
			logf("d2c qos1 paced on %s at Mosquitto's paced rate, %.0f msg/s", tg.name, m.Rate)
			quiet()
			r := runD2C(ctx, tg, p)
			r.Scenario = ScenarioPacedAtMosquitto
			logResult(logf, r)
			rep.Results = append(rep.Results, r)
		}
	}
	if ctx.Err() != nil {
		return finish(rep, started), ctx.Err()
	}
	if mosq != nil {
		mosq.stop()
		mosq = nil
	}

	for _, update := range []bool{false, true} {
		label := map[bool]string{false: "twin reads", true: "twin updates"}[update]
		if !selected(label) {
			continue
		}
		logf("%s", label)
		quiet()
		r := runTwins(ctx, h, update, sizes.TwinDevices, sizes.TwinWorkers, sizes.TwinDuration)
		logResult(logf, r)
		rep.Results = append(rep.Results, r)
	}

	if selected("c2d") {
		logf("c2d: %d messages to %d devices", sizes.C2DMessages, sizes.C2DDevices)
		quiet()
		r := runC2D(ctx, h, plain, sizes.C2DDevices, sizes.C2DMessages, sizes.C2DWorkers, sizes.ScenarioTimeout)
		logResult(logf, r)
		rep.Results = append(rep.Results, r)
	}

	if ctx.Err() != nil {
		return finish(rep, started), ctx.Err()
	}
	stormDevices := min(sizes.StormConnects, nDevices)
	hybrid := h.tlsConf.Clone()
	hybrid.CurvePreferences = nil // Go's default: X25519MLKEM768 first
	secureHybrid := deviceDialer{host: h.ip, addr: h.mqttTLS, tls: hybrid}
	for _, tg := range []struct {
		name string
		d    deviceDialer
	}{{TargetMoatTLS, secure}, {TargetMoatTLSHybrid, secureHybrid}, {TargetMoatPlain, plain}} {
		if !selected("storm " + tg.name) {
			continue
		}
		logf("connect storm on %s: %d connects, %d dialers", tg.name, sizes.StormConnects, sizes.StormDialers)
		quiet()
		r := runConnectStorm(ctx, tg.d, tg.name, sizes.StormConnects, sizes.StormDialers, stormDevices, h.pid(), sizes.ScenarioTimeout)
		logResult(logf, r)
		rep.Results = append(rep.Results, r)
	}

	if ctx.Err() != nil {
		return finish(rep, started), ctx.Err()
	}
	if !selected("idle") {
		return finish(rep, started), nil
	}
	// Idle connections on a fresh hub process, so that memory the earlier
	// scenarios left in its heap does not hide the per-connection cost.
	h.stop()
	logf("restarting hub for the idle test")
	idleArgs, err := profilingArgs(work)
	if err != nil {
		return finish(rep, started), err
	}
	h, err = startHub(ctx, cfg.MoatBin, hubData, cfg.HubIP, cfg.HTTPSPort, filepath.Join(work, "hub-idle.log"), idleArgs...)
	if err != nil {
		return finish(rep, started), err
	}
	timeout := 10 * time.Minute
	if cfg.Quick {
		timeout = sizes.ScenarioTimeout
	}
	// First the smallest step without TLS, to tell what TLS itself costs.
	idlePlain := plain
	idlePlain.localIPs = localIPs(8)
	logf("idle connections over plain TCP: %d", sizes.IdleSteps[0])
	for _, r := range runIdle(ctx, h, idlePlain, TargetMoatPlain, sizes.IdleSteps[:1], sizes.IdleDialers, timeout) {
		logResult(logf, r)
		rep.Results = append(rep.Results, r)
	}
	h.stop()
	h, err = startHub(ctx, cfg.MoatBin, hubData, cfg.HubIP, cfg.HTTPSPort, filepath.Join(work, "hub-idle-tls.log"), idleArgs...)
	if err != nil {
		return finish(rep, started), err
	}
	idle := secure
	idle.localIPs = localIPs(8)
	logf("idle connections over TLS: %v", sizes.IdleSteps)
	for _, r := range runIdle(ctx, h, idle, TargetMoatTLS, sizes.IdleSteps, sizes.IdleDialers, timeout) {
		logResult(logf, r)
		rep.Results = append(rep.Results, r)
	}

	finish(rep, started)
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	return rep, nil
}

// finish fills in what a report gets at the end, even of an interrupted run.
func finish(rep *Report, started time.Time) *Report {
	rep.Seconds = time.Since(started).Seconds()
	rep.Machine.LoadAvgEnd = loadAvg()
	rep.Summary = summaryRows(rep)
	rep.Caveats = append(rep.Caveats, standardCaveats...)
	return rep
}

var standardCaveats = []string{
	"The generator, the hub and Mosquitto share the same cores; every figure includes the generator's own CPU cost, and anything else running on the machine (see loadAvg) makes them noisy.",
	"Moat acknowledges QoS 1 only once the message is in its durable log on disk (group-committed fsync); Mosquitto runs without persistence.",
	"Routed runs (moat-plain-routed-N) carry fan=N and are routed to N webhook endpoints served by the generator on loopback (JSON batches over HTTP); a message counts as delivered once all N have it, and its latency is to the last one. Messages an endpoint gets twice count as duplicates.",
	"The moat-plain and moat-tls runs read the live events stream (GET /moat/events, NDJSON over HTTPS), the fallback route's endpoint. It is best effort: it skips messages for a slow reader and says how many (dropped); 'lost' counts only messages that vanished without such notice.",
	"Mosquitto's receiver is one MQTT subscriber to bench/# at QoS 0, like Moat's unacknowledged events stream; the mosquitto-sub-qos1 run subscribes at QoS 1 instead, which adds Mosquitto's acknowledged outbound flow.",
	"QoS 1 rate = PUBACKs per second at the publishers (ingest); receive rate = first receipts per second at the receiver. The paced latency runs go at half of the lower of the two, the end-to-end peak.",
	"TLS clients offer X25519 and P-256 key exchange, as the Azure IoT SDKs over OpenSSL 3 (Node 20, C) do; the moat-tls-hybrid-kex connect storm uses Go's default client instead, which offers the hybrid post-quantum X25519MLKEM768 (the hub accepts it when offered). The generator verifies the hub's certificate chain once and pins the certificate for every later connection, as a device with a pinned server certificate would: its own side of a handshake, on the same cores, is one ECDSA verification lighter; the hub's side is unchanged.",
	"Before each scenario the harness waits (up to 15 s) until the hub and Mosquitto use under a tenth of a core, so that work one scenario leaves behind (an endpoint's backlog, log compaction) is not charged to the next.",
	"Unpaced runs' latencies are queueing delay (the generator publishes as fast as it can); only the paced runs' latencies are meaningful. Paced runs also give the p99 of each second's messages (JSON p99PerSecondMs, median and extremes in the notes), which tells a tail everywhere from a few bad moments.",
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}

func logResult(logf func(string, ...any), r Result) {
	if r.Failure != "" {
		logf("  FAILED: %s", r.Failure)
	}
	lat := ""
	if r.Latency != nil && r.Latency.Samples > 0 {
		lat = fmt.Sprintf(" p50 %.2f ms p99 %.2f ms p999 %.2f ms", r.Latency.P50, r.Latency.P99, r.Latency.P999)
	}
	logf("  rate %.0f/s recv %.0f/s sent %d acked %d received %d dropped %d lost %d dup %d errors %d%s", r.Rate, r.ReceiveRate, r.Sent, r.Acked, r.Received, r.Dropped, r.Lost, r.Duplicates, r.Errors, lat)
	if r.RSSPerDevice != 0 {
		logf("  RSS per device %d B", r.RSSPerDevice)
	}
	if r.FirstErr != "" {
		logf("  first error: %s", r.FirstErr)
	}
}

// WriteReport stores results.json and results.md in dir.
func WriteReport(dir string, rep *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("results directory: %w", err)
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(Markdown(rep)), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// ErrNoMosquitto is returned by FindMosquitto when no binary is found.
var ErrNoMosquitto = errors.New("mosquitto not found")

// FindMosquitto returns the Debian broker's path, or one on PATH.
func FindMosquitto() (string, error) {
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto", nil
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	return "", ErrNoMosquitto
}
