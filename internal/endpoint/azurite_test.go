package endpoint

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// This file runs a real Azurite (npm azurite, blob service only) for tests.
// Other packages may copy it: it depends on nothing else in this package.

// azuriteKey is the well-known key of Azurite's devstoreaccount1.
const azuriteKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

// azurite is one Azurite blob service on 127.0.0.1, keeping its data in a
// temporary directory so that it survives Stop and Start.
type azurite struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

// azuriteBinary finds test/e2e/node_modules/.bin/azurite-blob above the
// package directory. Without it the test is skipped, unless CI is set.
func azuriteBinary(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
	bin := filepath.Join(dir, "test", "e2e", "node_modules", ".bin", "azurite-blob")
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("azurite not installed (%s); run `cd test/e2e && npm ci`", bin)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// startAzurite starts Azurite on a free loopback port; t.Cleanup stops it.
func startAzurite(t testing.TB) *azurite {
	t.Helper()
	a := &azurite{t: t, bin: azuriteBinary(t), dir: t.TempDir()}
	a.Start()
	t.Cleanup(a.Stop)
	return a
}

var azuriteListening = regexp.MustCompile(`listens on http://127\.0\.0\.1:(\d+)`)

// Start runs Azurite, on the port it had before if it ran already. Telemetry
// is off: it phones home, and keeps a stopping Azurite alive for seconds.
func (a *azurite) Start() {
	a.t.Helper()
	if a.cmd != nil {
		a.t.Fatal("azurite is running")
	}
	port := a.port
	for attempt := 0; ; attempt++ {
		cmd := exec.Command(a.bin, "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port),
			"--location", a.dir, "--skipApiVersionCheck", "--silent", "--disableTelemetry")
		cmd.Dir = a.dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		out, err := cmd.StdoutPipe()
		if err != nil {
			a.t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			a.t.Fatalf("start azurite: %v", err)
		}
		got := make(chan int, 1)
		done := make(chan struct{})
		var lines []string
		go func() {
			defer close(done)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if m := azuriteListening.FindStringSubmatch(sc.Text()); m != nil {
					p, _ := strconv.Atoi(m[1])
					got <- p
				} else if len(lines) < 20 {
					lines = append(lines, sc.Text())
				}
			}
			_ = cmd.Wait()
		}()
		select {
		case p := <-got:
			a.port, a.cmd, a.done = p, cmd, done
			return
		case <-done:
			// It exited: a restart may find its old port still held briefly.
			if port != 0 && attempt < 20 {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			a.t.Fatalf("azurite exited: %v", lines)
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			a.t.Fatalf("azurite did not start in 30 s: %v", lines)
		}
	}
}

// Stop ends Azurite gracefully (it saves its metadata on SIGTERM).
func (a *azurite) Stop() {
	if a.cmd == nil {
		return
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
	}
	a.cmd = nil
}

// Addr is Azurite's host:port.
func (a *azurite) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.port)) }

// HTTPClient is for Azure SDK clients of this Azurite (azcore's
// ClientOptions.Transport). It keeps no idle connections, so that Stop (a
// graceful stop: a forced one loses Azurite's latest metadata) never waits
// for clients to let go.
func (a *azurite) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
}

// ConnectionString is the devstoreaccount1 connection string.
func (a *azurite) ConnectionString() string {
	return "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + azuriteKey +
		";BlobEndpoint=http://" + a.Addr() + "/devstoreaccount1;"
}
