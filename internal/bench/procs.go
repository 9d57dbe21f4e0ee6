package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/serviceapi"
)

// server is a broker process the harness started and will stop.
type server struct {
	name string
	cmd  *exec.Cmd
	exit chan struct{} // closed when the process has exited
	log  *os.File
}

// start runs the command with its stderr and stdout in logPath and waits until
// ready reports a line that means it is listening (or, if ready is nil, until
// probe succeeds).
func startServer(ctx context.Context, name string, cmd *exec.Cmd, logPath string, readyLine string, probeAddr string) (*server, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, exit: make(chan struct{}), log: logf}
	ready := make(chan struct{})
	go func() {
		// Copies the output to the log until the process exits and the pipe
		// closes; flags readiness once.
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Bytes()
			logf.Write(line)
			logf.Write([]byte{'\n'})
			if !signalled && readyLine != "" && bytes.Contains(line, []byte(readyLine)) {
				signalled = true
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(s.exit)
	}()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	if readyLine == "" {
		go func() {
			for {
				c, err := net.DialTimeout("tcp", probeAddr, time.Second)
				if err == nil {
					c.Close()
					close(ready)
					return
				}
				select {
				case <-s.exit:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
	}
	select {
	case <-ready:
		return s, nil
	case <-s.exit:
		return nil, fmt.Errorf("%s exited before it was ready (%v); see %s", name, cmd.ProcessState, logPath)
	case <-deadline.C:
		s.stop()
		return nil, fmt.Errorf("%s not ready within 60 s; see %s", name, logPath)
	case <-ctx.Done():
		s.stop()
		return nil, ctx.Err()
	}
}

// stop asks the process to end (SIGTERM), kills it after 15 s and waits.
func (s *server) stop() {
	if s == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exit:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exit
	}
	s.log.Close()
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// procUsage is a process's resident memory and CPU time so far.
type procUsage struct {
	RSS int64         // bytes
	CPU time.Duration // user + system
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

func readUsage(pid int) (procUsage, error) {
	var u procUsage
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("read process stats: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(st, ')')
	if i < 0 {
		return u, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(string(st[i+1:]))
	if len(f) < 22 {
		return u, errors.New("unexpected /proc stat format")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	u.CPU = time.Duration(ut+stt) * time.Second / clockTicks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("read process status: %w", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			u.RSS = kb * 1024
		}
	}
	return u, nil
}

// moatHub is a hub process with what a client needs to reach it.
type moatHub struct {
	*server
	ip         string
	dataDir    string
	connString string
	roots      *x509.CertPool
	tlsConf    *tls.Config
	mqttTLS    string
	mqttPlain  string
	https      string
	metrics    string
}

// hubAddrs are the listeners of a hub on ip.
func hubAddrs(ip string, httpsPort int) (mqtts, mqtt, https, metrics string) {
	return net.JoinHostPort(ip, "8883"), net.JoinHostPort(ip, "1883"), net.JoinHostPort(ip, strconv.Itoa(httpsPort)), net.JoinHostPort(ip, "9090")
}

// startHub runs `moat serve` on ip with its state in dataDir (created on first
// start) and reads the owner connection string and CA from there.
func startHub(ctx context.Context, bin, dataDir, ip string, httpsPort int, logPath string, extra ...string) (*moatHub, error) {
	mqtts, mqtt, https, metrics := hubAddrs(ip, httpsPort)
	cmd := exec.Command(bin, "serve", "--data-dir", dataDir, "--hostname", ip,
		"--mqtt-addr", mqtts, "--https-addr", https, "--mqtt-plain-addr", mqtt,
		"--metrics-addr", metrics, "--log-level", "info")
	cmd.Args = append(cmd.Args, extra...)
	s, err := startServer(ctx, "moat", cmd, logPath, "moat hub ready", "")
	if err != nil {
		return nil, err
	}
	h := &moatHub{server: s, ip: ip, dataDir: dataDir, mqttTLS: mqtts, mqttPlain: mqtt, https: https, metrics: metrics}
	if err := h.loadCredentials(); err != nil {
		s.stop()
		return nil, err
	}
	return h, nil
}

func (h *moatHub) loadCredentials() error {
	pem, err := os.ReadFile(filepath.Join(h.dataDir, "pki", "ca.pem"))
	if err != nil {
		return fmt.Errorf("hub CA: %w", err)
	}
	h.roots = x509.NewCertPool()
	if !h.roots.AppendCertsFromPEM(pem) {
		return errors.New("hub CA: no certificate in ca.pem")
	}
	// Clients as the Azure IoT SDKs connect: OpenSSL 3 (Node 20, the C SDK)
	// offers X25519 and P-256, not Go's default hybrid post-quantum
	// X25519MLKEM768, whose key exchange costs the hub about a quarter of a
	// TLS connect. The storm also runs with Go's default (TargetMoatTLSHybrid).
	verified := &tls.Config{RootCAs: h.roots, ServerName: h.ip, MinVersion: tls.VersionTLS12, ClientSessionCache: nil,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}
	// The generator shares the hub's cores, and checking the chain is a
	// third of a Go TLS client's connect. It verifies the hub's certificate
	// against the CA once and then pins it (as devices with a pinned server
	// certificate do); the hub's side of every handshake is unchanged.
	leaf, err := serverLeaf(h.mqttTLS, verified)
	if err != nil {
		return fmt.Errorf("hub certificate: %w", err)
	}
	h.tlsConf = verified.Clone()
	h.tlsConf.InsecureSkipVerify = true // replaced by the pin below
	h.tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, leaf) {
			return errors.New("hub presented a certificate other than the pinned one")
		}
		return nil
	}
	policies, err := hub.LoadPolicies(h.dataDir)
	if err != nil {
		return err
	}
	for _, p := range policies {
		if p.KeyName == "iothubowner" {
			h.connString = fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", h.ip, p.KeyName, p.PrimaryKey)
			return nil
		}
	}
	return errors.New("hub has no iothubowner policy")
}

// serverLeaf makes one fully verified TLS handshake with addr and returns the
// server's certificate.
func serverLeaf(addr string, conf *tls.Config) ([]byte, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: conf}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0].Raw, nil
}

// serviceClient returns a REST client that keeps up to conns connections
// open, so that parallel workers do not redo TLS handshakes.
func (h *moatHub) serviceClient(conns int) (*serviceapi.Client, *http.Client, error) {
	tr := &http.Transport{
		TLSClientConfig:     h.tlsConf.Clone(),
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
		ForceAttemptHTTP2:   false,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	}
	hc := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	c, err := serviceapi.NewClient(h.connString, serviceapi.ClientOptions{Address: h.https, HTTPClient: hc})
	if err != nil {
		return nil, nil, fmt.Errorf("service client: %w", err)
	}
	return c, hc, nil
}

// mosquittoConfig is the broker configuration the comparison runs with: no
// persistence, Nagle off, and queues large enough that a fast publisher is not
// throttled by the defaults (20 in flight, 1000 queued).
func mosquittoConfig(ip string, port int) string {
	return fmt.Sprintf(`# generated by moatbench
listener %d %s
allow_anonymous true
set_tcp_nodelay true
persistence false
max_inflight_messages 1000
max_queued_messages 1000000
max_queued_bytes 0
max_keepalive 65535
log_dest stderr
log_type error
log_type warning
`, port, ip)
}

func startMosquitto(ctx context.Context, bin, dir, ip string, port int) (*server, string, error) {
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(mosquittoConfig(ip, port)), 0o644); err != nil {
		return nil, "", fmt.Errorf("write mosquitto config: %w", err)
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	s, err := startServer(ctx, "mosquitto", exec.Command(bin, "-c", conf), filepath.Join(dir, "mosquitto.log"), "", addr)
	if err != nil {
		return nil, "", err
	}
	return s, addr, nil
}

// Machine describes where the figures were measured.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpuModel"`
	MemoryMB  int64  `json:"memoryMB"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"goVersion"`
	// LoadAvg is /proc/loadavg when the run started and ended: anything else
	// running on the cores skews the figures.
	LoadAvgStart string `json:"loadAvgStart"`
	LoadAvgEnd   string `json:"loadAvgEnd,omitempty"`
}

func describeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				m.MemoryMB = kb / 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.LoadAvgStart = loadAvg()
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// raiseFileLimit lifts RLIMIT_NOFILE to want (the hub and Mosquitto inherit
// it); without privilege it settles for the hard limit. It returns the limit
// in force.
func raiseFileLimit(want uint64) uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	if r.Cur >= want {
		return r.Cur
	}
	nr := syscall.Rlimit{Cur: want, Max: max(want, r.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nr); err == nil {
		return want
	}
	nr = syscall.Rlimit{Cur: r.Max, Max: r.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nr); err == nil {
		return r.Max
	}
	return r.Cur
}

// scrapeMetric reads one unlabelled sample from the hub's Prometheus endpoint.
func scrapeMetric(ctx context.Context, addr, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// memAvailable is the kernel's estimate of memory available to new work.
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// settle waits until the processes are quiet — below a tenth of a core over
// half a second — or until limit passes, so that work a scenario left behind
// (an endpoint's backlog, log trimming and compaction, a broker draining)
// does not count against the next one. It returns how long it waited.
func settle(ctx context.Context, limit time.Duration, pids ...int) time.Duration {
	const window = 500 * time.Millisecond
	start := time.Now()
	cpu := func() time.Duration {
		var sum time.Duration
		for _, pid := range pids {
			if pid <= 0 {
				continue
			}
			if u, err := readUsage(pid); err == nil {
				sum += u.CPU
			}
		}
		return sum
	}
	prev := cpu()
	for time.Since(start) < limit {
		select {
		case <-ctx.Done():
			return time.Since(start)
		case <-time.After(window):
		}
		now := cpu()
		if now-prev < window/10 {
			break
		}
		prev = now
	}
	return time.Since(start)
}
