package endpoint

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moat-iot/moat/internal/message"
)

// startMosquitto runs Debian's mosquitto on a free loopback port.
func startMosquitto(t *testing.T, port int) func() {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
			t.Skip("mosquitto is not installed (apt-get install mosquitto)")
		}
		bin = "/usr/sbin/mosquitto"
	}
	conf := filepath.Join(t.TempDir(), "m.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", port), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("mosquitto did not listen: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	t.Cleanup(stop)
	return stop
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestMQTTBridgeWithMosquitto(t *testing.T) {
	port := freePort(t)
	stop := startMosquitto(t, port)
	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)

	var mu sync.Mutex
	got := map[string][]string{}
	sub := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("plant/#", 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got[m.Topic()] = append(got[m.Topic()], string(m.Payload()))
		mu.Unlock()
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	b, err := NewMQTTBridge(MQTTBridgeConfig{Name: "eg", URL: url, TopicTemplate: "plant/{deviceId}/{topic}", QoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	batch := []message.Message{
		{Body: []byte("1"), System: map[string]string{message.SysConnectionDevice: "d1", message.SysMQTTTopic: "line1/temp"}},
		{Body: []byte("2"), System: map[string]string{message.SysConnectionDevice: "d2", message.SysMQTTTopic: "line2/temp"}},
	}
	if err := b.Send(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two messages at the broker", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got["plant/d1/line1/temp"]) == 1 && len(got["plant/d2/line2/temp"]) == 1
	})

	// With the broker gone the batch fails, so a worker would retry it.
	stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Send(ctx, batch[:1]); err == nil {
		t.Fatal("send to a stopped broker succeeded")
	}
	// A broker back on the same port takes the retry.
	startMosquitto(t, port)
	if err := b.Send(ctx, batch[:1]); err != nil {
		t.Fatalf("after the broker came back: %v", err)
	}
}

func TestMQTTBridgeConfig(t *testing.T) {
	if _, err := NewMQTTBridge(MQTTBridgeConfig{Name: "x", URL: "tcp://127.0.0.1:1"}); err == nil {
		t.Fatal("missing topicTemplate accepted")
	}
	if _, err := NewMQTTBridge(MQTTBridgeConfig{Name: "x", URL: "tcp://127.0.0.1:1", TopicTemplate: "t", QoS: 2}); err == nil {
		t.Fatal("qos 2 accepted")
	}
}
