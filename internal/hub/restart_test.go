package hub_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/registry"
)

// TestSessionSurvivesRestart: a clean=false session's subscriptions outlive a
// hub restart, because the Azure SDKs reconnect without subscribing again; and
// a cloud-to-device message accepted before the restart is delivered after it.
func TestSessionSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ctx1, stop1 := context.WithCancel(context.Background())
	var wg1 sync.WaitGroup
	h1, err := startHub(ctx1, dir, &wg1)
	if err != nil {
		t.Fatal(err)
	}
	d, err := h1.svc.CreateDevice(ctxT(t, 10*time.Second), registry.Device{DeviceID: uniqueID("restart"), Authentication: registry.Authentication{Type: registry.AuthSAS}})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(h *testHub) *rawClient {
		c, err := tls.Dial("tcp", h.mqttAddr, h.tlsConfig())
		if err != nil {
			t.Fatalf("TLS dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
	}
	c1 := dial(h1)
	c1.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), false)
	for i, f := range []string{"devices/" + d.DeviceID + "/messages/devicebound/#", "$iothub/methods/POST/#"} {
		c1.write(subscribePacket(4, uint16(i+1), f))
		if p := c1.expect(9, 5*time.Second); p.body[len(p.body)-1] >= 0x80 {
			t.Fatalf("SUBACK refused %s", f)
		}
	}
	// Accepted while the device is offline, just before the hub goes away.
	c1.conn.Close()
	if err := h1.svc.SendC2D(ctxT(t, 5*time.Second), d.DeviceID, message.Message{Body: []byte("before"), System: map[string]string{message.SysMessageID: "m-before"}}); err != nil {
		t.Fatal(err)
	}
	stop1()
	wg1.Wait()

	ctx2, stop2 := context.WithCancel(context.Background())
	var wg2 sync.WaitGroup
	defer func() { stop2(); wg2.Wait() }()
	h2, err := startHub(ctx2, dir, &wg2)
	if err != nil {
		t.Fatal(err)
	}
	c2 := dial(h2)
	c2.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), false) // no SUBSCRIBE
	p := c2.nextPublish(5 * time.Second)
	if !strings.HasPrefix(p.topic, "devices/"+d.DeviceID+"/messages/devicebound/") || !strings.Contains(p.topic, "m-before") || string(p.payload) != "before" {
		t.Fatalf("after restart got %q %q", p.topic, p.payload)
	}
	c2.write(pubackPacket(p.pid))

	res := make(chan error, 1)
	go func() {
		_, err := h2.svc.InvokeMethod(context.Background(), d.DeviceID, "", methods.Request{MethodName: "reboot", ResponseTimeoutInSeconds: ptr(5)})
		res <- err
	}()
	p = c2.nextPublish(5 * time.Second)
	if !strings.HasPrefix(p.topic, "$iothub/methods/POST/reboot/?$rid=") {
		t.Fatalf("method request not delivered after restart: %q", p.topic)
	}
	rid := p.topic[strings.Index(p.topic, "$rid=")+5:]
	c2.write(publishPacket(4, "$iothub/methods/res/200/?$rid="+rid, 0, 0, []byte(`{}`)))
	if err := <-res; err != nil {
		t.Fatalf("method: %v", err)
	}

	// A clean session forgets what was persisted.
	c2.conn.Close()
	c3 := dial(h2)
	c3.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), true)
	c3.conn.Close()
	c4 := dial(h2)
	c4.mustConnect(4, d.DeviceID, deviceToken(t, d, time.Hour), false)
	if _, err := h2.svc.InvokeMethod(ctxT(t, 10*time.Second), d.DeviceID, "", methods.Request{MethodName: "x", ResponseTimeoutInSeconds: ptr(5)}); err == nil {
		t.Fatal("a method reached a device whose clean session should have dropped its subscriptions")
	}
}
