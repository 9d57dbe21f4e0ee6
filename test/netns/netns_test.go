// Package netns proves Moat's network isolation with real clients in Linux
// network namespaces that the test creates and removes itself:
//
//	inet ns (10.250.1.2, .3, fd00:250:1::2, ::3) ── veth ── hub ns 10.250.1.1, fd00:250:1::1  (public address)
//	vnet ns (10.250.2.2)                         ── veth ── hub ns 10.250.2.1                   (private endpoint "vnet")
//
// `moat serve` runs in the hub namespace on wildcard addresses; the official
// Node device SDK, mosquitto_pub, curl and openssl run in the client
// namespaces; `moat network …` runs in the hub namespace over loopback (local
// administration). No address outside these namespaces is used, and no
// interface of the root namespace is touched. It needs root and iproute2 and
// skips otherwise.
package netns

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	hubHost   = "hub.moat.test"
	hubPublic = "10.250.1.1"
	hubV6     = "fd00:250:1::1"
	hubPriv   = "10.250.2.1"
	inetIP    = "10.250.1.2"
	inetIP2   = "10.250.1.3"
	inetV6    = "fd00:250:1::2"
	inetV6b   = "fd00:250:1::3"
	vnetIP    = "10.250.2.2"
)

type topo struct {
	hub, inet, vnet string // namespace names
	dir             string // hub data dir
	moat            string // binary
	root            string // repository root
}

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func requireEnv(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netns tests need root (they create network namespaces); run `go test ./test/netns/` as root, as CI does")
	}
	for _, tool := range []string{"ip", "node", "curl", "mosquitto_pub", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("netns tests need %s on PATH (.ci/run installs it)", tool)
		}
	}
	if _, err := os.Stat(filepath.Join(repoRoot(t), "test", "e2e", "node_modules", "azure-iot-device")); err != nil {
		t.Skip("netns tests need the Node SDK: run `make e2e-deps` first")
	}
}

// sh runs a command, optionally inside a namespace, and returns its output
// and exit code; it fails the test only when the command cannot start.
func sh(t *testing.T, ns string, env []string, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if ns != "" {
		args = append([]string{"netns", "exec", ns, name}, args...)
		name = "ip"
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("%s %v: %v", name, args, err)
		}
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

func must(t *testing.T, ns string, name string, args ...string) string {
	t.Helper()
	o, e, code := sh(t, ns, nil, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d: %s %s", name, strings.Join(args, " "), code, o, e)
	}
	return o
}

func setup(t *testing.T) *topo {
	requireEnv(t)
	root := repoRoot(t)
	tp := &topo{root: root, dir: t.TempDir()}
	base := fmt.Sprintf("moat-t-%d", os.Getpid())
	tp.hub, tp.inet, tp.vnet = base+"-hub", base+"-inet", base+"-vnet"

	tp.moat = filepath.Join(t.TempDir(), "moat")
	build := exec.Command("go", "build", "-o", tp.moat, "./cmd/moat")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	for _, ns := range []string{tp.hub, tp.inet, tp.vnet} {
		must(t, "", "ip", "netns", "add", ns)
		t.Cleanup(func() { _, _, _ = sh(t, "", nil, "ip", "netns", "del", ns) })
		must(t, "", "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// Both ends are created inside their namespaces: nothing appears in the
	// root namespace, and deleting the namespaces deletes the links.
	must(t, "", "ip", "link", "add", "h-inet", "netns", tp.hub, "type", "veth", "peer", "name", "eth0", "netns", tp.inet)
	must(t, "", "ip", "link", "add", "h-vnet", "netns", tp.hub, "type", "veth", "peer", "name", "eth0", "netns", tp.vnet)
	addr := func(ns, dev string, cidrs ...string) {
		for _, c := range cidrs {
			args := []string{"-n", ns, "addr", "add", c, "dev", dev}
			if strings.Contains(c, ":") {
				args = append(args, "nodad") // usable at once, no duplicate detection wait
			}
			must(t, "", "ip", args...)
		}
		must(t, "", "ip", "-n", ns, "link", "set", dev, "up")
	}
	addr(tp.hub, "h-inet", hubPublic+"/24", hubV6+"/64")
	addr(tp.hub, "h-vnet", hubPriv+"/24")
	addr(tp.inet, "eth0", inetIP+"/24", inetIP2+"/24", inetV6+"/64", inetV6b+"/64")
	addr(tp.vnet, "eth0", vnetIP+"/24")
	return tp
}

// startHub runs `moat serve` in the hub namespace until stop is called or the
// test ends.
func (tp *topo) startHub(t *testing.T) (stop func()) {
	cfg := fmt.Sprintf(`properties:
  hostName: %s
  privateEndpointConnections:
  - name: vnet
    properties:
      privateEndpoint: {ipAddresses: ["%s"]}
      privateLinkServiceConnectionState: {status: Pending, description: awaiting approval}
moat:
  certificateNames: ["%s", "%s", "%s"]
  listeners: {mqtt: ":8883", https: ":443", metrics: "127.0.0.1:9090"}
  dns:
    listen: ":5353"
    publicAddresses: ["%s"]
    privateNetworks: ["10.250.2.0/24"]
    upstream: []
`, hubHost, hubPriv, hubPublic, hubPriv, hubV6, hubPublic)
	cfgPath := filepath.Join(tp.dir, "..", "moat.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", tp.hub, tp.moat, "serve", "--config", cfgPath, "--data-dir", tp.dir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var stopOnce sync.Once
	stop = func() {
		stopOnce.Do(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
	}
	t.Cleanup(stop)
	ready := make(chan struct{})
	var logBuf bytes.Buffer
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "moat hub ready") {
				once = true
				close(ready)
			}
			if !once {
				logBuf.WriteString(sc.Text() + "\n")
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("hub not ready after 30 s:\n%s", logBuf.String())
	}
	return stop
}

// cli runs a moat client command in the hub namespace over loopback.
func (tp *topo) cli(t *testing.T, args ...string) string {
	t.Helper()
	args = append(args, "--data-dir", tp.dir, "--address", "127.0.0.1:443")
	return must(t, tp.hub, tp.moat, args...)
}

func (tp *topo) nodeEnv(hubIP string) []string {
	return []string{
		"HUB_IP=" + hubIP,
		"NODE_PATH=" + filepath.Join(tp.root, "test", "e2e", "node_modules"),
		"NODE_EXTRA_CA_CERTS=" + filepath.Join(tp.dir, "pki", "ca.pem"),
	}
}

// deviceOpen opens the official SDK client from ns and returns its verdict:
// "CONNECTED" or "ERROR <name> <message>".
func (tp *topo) deviceOpen(t *testing.T, ns, hubIP, cs string) string {
	t.Helper()
	o, e, _ := sh(t, ns, tp.nodeEnv(hubIP), "node", filepath.Join(tp.root, "test", "netns", "device.js"), "connect", cs)
	line, _, _ := strings.Cut(strings.TrimSpace(o), "\n")
	if line == "" {
		t.Fatalf("device script said nothing: %s", e)
	}
	return line
}

// heldDevice is an SDK client that stays connected.
type heldDevice struct {
	stdin io.WriteCloser
	lines chan string
}

func (tp *topo) deviceHold(t *testing.T, ns, hubIP, cs string) *heldDevice {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "node", filepath.Join(tp.root, "test", "netns", "device.js"), "hold", cs)
	cmd.Env = append(os.Environ(), tp.nodeEnv(hubIP)...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &heldDevice{stdin: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() { in.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if l := h.next(t, 30*time.Second); l != "CONNECTED" {
		t.Fatalf("held device from %s: %q", ns, l)
	}
	return h
}

func (h *heldDevice) next(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok {
			return "EXITED"
		}
		return l
	case <-time.After(d):
		return "TIMEOUT"
	}
}

// curlCode returns the HTTP status curl got from the hub's HTTPS listener
// ("000" when the connection was refused before any HTTP), and curl's exit code.
func (tp *topo) curlCode(t *testing.T, ns, hubIP string, extra ...string) (string, int) {
	t.Helper()
	host := hubIP
	if strings.Contains(hubIP, ":") {
		host = "[" + hubIP + "]"
	}
	args := append([]string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
		"--cacert", filepath.Join(tp.dir, "pki", "ca.pem"),
		"--resolve", hubHost + ":443:" + host,
		"https://" + hubHost + "/devices/dev1?api-version=2021-04-12"}, extra...)
	o, _, code := sh(t, ns, nil, "curl", args...)
	return strings.TrimSpace(o), code
}

// mosquittoPub publishes one message with a device SAS token; exit code 0
// means the hub accepted the connection and the PUBLISH.
func (tp *topo) mosquittoPub(t *testing.T, ns, hubIP, token string) (int, string) {
	t.Helper()
	o, e, code := sh(t, ns, nil, "mosquitto_pub", "-h", hubIP, "-p", "8883", "--cafile", filepath.Join(tp.dir, "pki", "ca.pem"),
		"-V", "mqttv311", "-i", "dev1", "-u", hubHost+"/dev1/?api-version=2021-04-12", "-P", token,
		"-t", "devices/dev1/messages/events/", "-m", "hello", "-q", "1")
	return code, o + e
}

// opensslSeesCertificate reports whether a TLS handshake attempt from ns got
// as far as the server's certificate.
func (tp *topo) opensslSeesCertificate(t *testing.T, ns, hubIP, port string, extra ...string) bool {
	t.Helper()
	args := append([]string{"s_client", "-connect", hubIP + ":" + port, "-servername", hubHost}, extra...)
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "openssl"}, args...)...)
	cmd.Stdin = strings.NewReader("")
	out, _ := cmd.CombinedOutput()
	return strings.Contains(string(out), "BEGIN CERTIFICATE") || strings.Contains(string(out), "Server certificate")
}

func TestNetworkIsolation(t *testing.T) {
	tp := setup(t)
	stop := tp.startHub(t)

	tp.cli(t, "device", "create", "-d", "dev1")
	tp.cli(t, "device", "create", "-d", "dev2")
	cs1 := strings.TrimSpace(tp.cli(t, "device", "show-connection-string", "-d", "dev1"))
	cs2 := strings.TrimSpace(tp.cli(t, "device", "show-connection-string", "-d", "dev2"))
	token := strings.TrimSpace(tp.cli(t, "device", "generate-sas-token", "-d", "dev1"))

	t.Run("public access enabled admits the internet client", func(t *testing.T) {
		if got := tp.deviceOpen(t, tp.inet, hubPublic, cs1); got != "CONNECTED" {
			t.Fatalf("internet device: %s", got)
		}
		if code, out := tp.mosquittoPub(t, tp.inet, hubPublic, token); code != 0 {
			t.Fatalf("mosquitto_pub from the internet: exit %d: %s", code, out)
		}
	})

	t.Run("pending and rejected private endpoints refuse, approved admits", func(t *testing.T) {
		got := tp.deviceOpen(t, tp.vnet, hubPriv, cs2)
		if !strings.HasPrefix(got, "ERROR UnauthorizedError") {
			t.Fatalf("device through a Pending endpoint: %s (want UnauthorizedError)", got)
		}
		if tp.opensslSeesCertificate(t, tp.vnet, hubPriv, "8883") {
			t.Error("a Pending endpoint's client was sent the server certificate")
		}
		tp.cli(t, "network", "private-endpoint", "approve", "--name", "vnet")
		if got := tp.deviceOpen(t, tp.vnet, hubPriv, cs2); got != "CONNECTED" {
			t.Fatalf("device through the Approved endpoint: %s", got)
		}
		tp.cli(t, "network", "private-endpoint", "reject", "--name", "vnet")
		if _, code := tp.curlCode(t, tp.vnet, hubPriv); code == 0 {
			t.Fatal("curl through a Rejected endpoint got an HTTP answer")
		}
		tp.cli(t, "network", "private-endpoint", "approve", "--name", "vnet")
		if status, code := tp.curlCode(t, tp.vnet, hubPriv); code != 0 || status != "401" {
			t.Fatalf("curl through the Approved endpoint: status %s exit %d (want an HTTP 401 for the missing SAS)", status, code)
		}
	})

	t.Run("DNS answers differ by where the question comes from", func(t *testing.T) {
		if _, err := exec.LookPath("dig"); err != nil {
			t.Skip("dig is not installed (apt-get install bind9-dnsutils)")
		}
		// The endpoint is Approved here, so its address is in the zone group.
		inet := strings.Fields(must(t, tp.inet, "dig", "+short", "-p", "5353", "@"+hubPublic, hubHost))
		vnet := strings.Fields(must(t, tp.vnet, "dig", "+short", "-p", "5353", "@"+hubPriv, hubHost))
		cname := "hub.privatelink.moat.test."
		if len(inet) != 2 || inet[0] != cname || inet[1] != hubPublic {
			t.Errorf("internet client resolves %s to %v, want %s then %s", hubHost, inet, cname, hubPublic)
		}
		if len(vnet) != 2 || vnet[0] != cname || vnet[1] != hubPriv {
			t.Errorf("private client resolves %s to %v, want %s then %s", hubHost, vnet, cname, hubPriv)
		}
	})

	t.Run("public access disabled blocks the internet, not the private endpoint", func(t *testing.T) {
		tp.cli(t, "network", "public-access", "--enabled", "false")
		got := tp.deviceOpen(t, tp.inet, hubPublic, cs1)
		if !strings.HasPrefix(got, "ERROR UnauthorizedError") {
			t.Errorf("internet device with public access disabled: %s (want UnauthorizedError)", got)
		}
		if code, out := tp.mosquittoPub(t, tp.inet, hubPublic, token); code == 0 {
			t.Errorf("mosquitto_pub from the internet published with public access disabled: %s", out)
		}
		if status, code := tp.curlCode(t, tp.inet, hubPublic); code == 0 {
			t.Errorf("curl from the internet got HTTP %s with public access disabled", status)
		}
		if tp.opensslSeesCertificate(t, tp.inet, hubPublic, "443") {
			t.Error("a refused internet client was sent the server certificate")
		}
		if got := tp.deviceOpen(t, tp.vnet, hubPriv, cs2); got != "CONNECTED" {
			t.Errorf("private device with public access disabled: %s", got)
		}
		if code, out := tp.mosquittoPub(t, tp.vnet, hubPriv, token); code != 0 {
			t.Errorf("mosquitto_pub through the private endpoint: exit %d: %s", code, out)
		}
		tp.cli(t, "network", "public-access", "--enabled", "true")
	})

	t.Run("IP allow rules admit exactly the listed CIDRs", func(t *testing.T) {
		tp.cli(t, "network", "ip-rule", "add", "--name", "inet-host", "--ip-mask", inetIP+"/32")
		tp.cli(t, "network", "ip-rule", "add", "--name", "inet-v6-host", "--ip-mask", inetV6+"/128")
		tp.cli(t, "network", "default-action", "Deny")
		if status, code := tp.curlCode(t, tp.inet, hubPublic, "--interface", inetIP); code != 0 || status != "401" {
			t.Errorf("curl from the allowed %s: status %s exit %d", inetIP, status, code)
		}
		if status, code := tp.curlCode(t, tp.inet, hubPublic, "--interface", inetIP2); code == 0 {
			t.Errorf("curl from %s (not in any rule) got HTTP %s", inetIP2, status)
		}
		if status, code := tp.curlCode(t, tp.inet, hubV6, "--interface", inetV6); code != 0 || status != "401" {
			t.Errorf("curl from the allowed %s: status %s exit %d", inetV6, status, code)
		}
		if status, code := tp.curlCode(t, tp.inet, hubV6, "--interface", inetV6b); code == 0 {
			t.Errorf("curl from %s (not in any rule) got HTTP %s", inetV6b, status)
		}
		// The kernel picks the first address of the subnet (inetIP) for
		// clients that do not bind.
		if code, out := tp.mosquittoPub(t, tp.inet, hubPublic, token); code != 0 {
			t.Errorf("mosquitto_pub from the allowed address: exit %d: %s", code, out)
		}
		if got := tp.deviceOpen(t, tp.inet, hubPublic, cs1); got != "CONNECTED" {
			t.Errorf("SDK device from the allowed address: %s", got)
		}
	})

	t.Run("a rule change cuts a connected device within one second", func(t *testing.T) {
		inet := tp.deviceHold(t, tp.inet, hubPublic, cs1)
		vnet := tp.deviceHold(t, tp.vnet, hubPriv, cs2)
		start := time.Now()
		tp.cli(t, "network", "ip-rule", "remove", "--name", "inet-host")
		if l := inet.next(t, 3*time.Second); l != "DISCONNECTED" {
			t.Fatalf("internet device after its rule was removed: %q", l)
		}
		took := time.Since(start)
		t.Logf("device disconnected %v after the rule change began (CLI round trip included)", took)
		if took > time.Second {
			t.Errorf("device cut after %v, want within 1 s", took)
		}
		// The private endpoint's device is not disturbed.
		fmt.Fprintln(vnet.stdin, "send")
		if l := vnet.next(t, 10*time.Second); l != "SENT" {
			t.Errorf("private device after the change: %q", l)
		}
		tp.cli(t, "network", "default-action", "Allow")
	})

	t.Run("the TLS minimum is enforced", func(t *testing.T) {
		tp.cli(t, "network", "min-tls-version", "1.3")
		if status, code := tp.curlCode(t, tp.vnet, hubPriv, "--tls-max", "1.2"); code == 0 {
			t.Errorf("TLS 1.2 client admitted under minTlsVersion 1.3 (HTTP %s)", status)
		}
		if tp.opensslSeesCertificate(t, tp.vnet, hubPriv, "8883", "-tls1_2") {
			t.Error("openssl -tls1_2 completed a handshake on 8883 under minTlsVersion 1.3")
		}
		if status, code := tp.curlCode(t, tp.vnet, hubPriv, "--tlsv1.3"); code != 0 || status != "401" {
			t.Errorf("TLS 1.3 client: status %s exit %d", status, code)
		}
		tp.cli(t, "network", "min-tls-version", "1.2")
		if status, code := tp.curlCode(t, tp.vnet, hubPriv, "--tls-max", "1.2"); code != 0 || status != "401" {
			t.Errorf("TLS 1.2 client under minTlsVersion 1.2: status %s exit %d", status, code)
		}
		// The probe the refusals above rely on does see a certificate when
		// one is sent.
		if !tp.opensslSeesCertificate(t, tp.vnet, hubPriv, "8883", "-tls1_2") {
			t.Error("openssl -tls1_2 saw no certificate under minTlsVersion 1.2")
		}
	})

	t.Run("audit lines and counters", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(tp.dir, "audit.log"))
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var rec map[string]string
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("audit line is not JSON: %q", l)
			}
			for _, k := range []string{"time", "listener", "local", "remote", "endpoint", "rule", "decision"} {
				if rec[k] == "" {
					t.Fatalf("audit line without %s: %q", k, l)
				}
			}
			if strings.Contains(l, "SharedAccessSignature") || strings.Contains(l, "sig=") {
				t.Fatalf("audit line carries a secret: %q", l)
			}
			seen[rec["decision"]+"|"+rec["listener"]+"|"+rec["endpoint"]+"|"+rec["rule"]] = true
		}
		for _, want := range []string{
			"refuse|mqtts|vnet|private endpoint Pending",
			"accept|mqtts|vnet|private endpoint Approved",
			"refuse|mqtts|public|publicNetworkAccess disabled",
			"accept|https|public|inet-host",
			"refuse|https|public|defaultAction Deny",
			"close|mqtts|public|defaultAction Deny",
			"accept|https|public|local administration",
		} {
			if !seen[want] {
				t.Errorf("no audit line %q", want)
			}
		}
		metrics := must(t, tp.hub, "curl", "-s", "http://127.0.0.1:9090/metrics")
		for _, want := range []string{`moat_network_decisions_total{decision="refuse",listener="mqtts"}`, `moat_network_decisions_total{decision="close",listener="mqtts"}`, `moat_network_decisions_total{decision="accept",listener="https"}`} {
			if !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})

	t.Run("live changes survive a restart", func(t *testing.T) {
		// The config file still says Pending; network.json says Approved.
		stop()
		tp.startHub(t)
		if got := tp.deviceOpen(t, tp.vnet, hubPriv, cs2); got != "CONNECTED" {
			t.Errorf("private device after restart: %s", got)
		}
		p := tp.cli(t, "network", "show")
		var pol struct {
			PrivateEndpointConnections []struct {
				Properties struct {
					PrivateLinkServiceConnectionState struct{ Status string }
				}
			}
		}
		if err := json.Unmarshal([]byte(p), &pol); err != nil || len(pol.PrivateEndpointConnections) != 1 || pol.PrivateEndpointConnections[0].Properties.PrivateLinkServiceConnectionState.Status != "Approved" {
			t.Fatalf("network show: %v %s", err, p)
		}
		b, err := os.ReadFile(filepath.Join(tp.dir, "network.json"))
		if err != nil || !strings.Contains(string(b), `"Approved"`) {
			t.Fatalf("network.json does not hold the approval: %v %s", err, b)
		}
	})
}
