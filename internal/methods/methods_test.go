package methods

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
)

// device is a transport whose "device" answers from a goroutine.
type device struct {
	mu     sync.Mutex
	inv    *Invoker
	online bool
	answer func(name string, payload []byte) (int, []byte, bool)
	calls  int
}

func (d *device) SendMethod(dev, mod, name, rid string, payload []byte) error {
	d.mu.Lock()
	d.calls++
	online := d.online
	d.mu.Unlock()
	if !online {
		return errcode.New(errcode.DeviceNotOnline, "offline")
	}
	go func() {
		st, body, ok := d.answer(name, payload)
		if ok {
			_ = d.inv.Respond(dev, mod, rid, st, body)
		}
	}()
	return nil
}

func intp(i int) *int { return &i }

func TestInvoke(t *testing.T) {
	d := &device{online: true, answer: func(name string, p []byte) (int, []byte, bool) { return 201, p, true }}
	d.inv = New(d)
	for _, payload := range []string{`null`, `""`, `"foo"`, `{}`, `{"a":[1,2,{"b":null}]}`, `42`} {
		res, err := d.inv.Invoke(context.Background(), "d1", "", Request{MethodName: "m", Payload: json.RawMessage(payload)})
		if err != nil {
			t.Fatalf("payload %s: %v", payload, err)
		}
		if res.Status != 201 || string(res.Payload) != payload {
			t.Fatalf("payload %s: got %d %s", payload, res.Status, res.Payload)
		}
	}
}

func TestInvokeNonJSONAnswerBecomesString(t *testing.T) {
	d := &device{online: true, answer: func(string, []byte) (int, []byte, bool) { return 200, []byte("not json"), true }}
	d.inv = New(d)
	res, err := d.inv.Invoke(context.Background(), "d1", "", Request{MethodName: "m"})
	if err != nil || string(res.Payload) != `"not json"` {
		t.Fatalf("got %s, %v", res.Payload, err)
	}
}

func TestInvokeErrors(t *testing.T) {
	silent := &device{online: true, answer: func(string, []byte) (int, []byte, bool) { return 0, nil, false }}
	silent.inv = New(silent)
	tests := []struct {
		name string
		req  Request
		want errcode.Code
	}{
		{"no name", Request{}, errcode.ArgumentInvalid},
		{"timeout too small", Request{MethodName: "m", ResponseTimeoutInSeconds: intp(4)}, errcode.ArgumentInvalid},
		{"timeout too large", Request{MethodName: "m", ResponseTimeoutInSeconds: intp(301)}, errcode.ArgumentInvalid},
		{"connect timeout negative", Request{MethodName: "m", ConnectTimeoutInSeconds: intp(-1)}, errcode.ArgumentInvalid},
		{"bad payload", Request{MethodName: "m", Payload: json.RawMessage(`{`)}, errcode.ArgumentInvalid},
	}
	for _, tt := range tests {
		_, err := silent.inv.Invoke(context.Background(), "d", "", tt.req)
		if !errcode.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %s", tt.name, err, tt.want.Name)
		}
	}
}

func TestInvokeOfflineAndConnectTimeout(t *testing.T) {
	d := &device{answer: func(string, []byte) (int, []byte, bool) { return 200, nil, true }}
	d.inv = New(d)
	if _, err := d.inv.Invoke(context.Background(), "d", "", Request{MethodName: "m"}); !errcode.Is(err, errcode.DeviceNotOnline) {
		t.Fatalf("offline: got %v", err)
	}
	// The device comes online while the caller waits up to its connect timeout.
	go func() {
		time.Sleep(300 * time.Millisecond)
		d.mu.Lock()
		d.online = true
		d.mu.Unlock()
	}()
	res, err := d.inv.Invoke(context.Background(), "d", "", Request{MethodName: "m", ConnectTimeoutInSeconds: intp(5)})
	if err != nil || res.Status != 200 || string(res.Payload) != "null" {
		t.Fatalf("got %+v, %v", res, err)
	}
}

func TestInvokeResponseTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 5 s")
	}
	d := &device{online: true, answer: func(string, []byte) (int, []byte, bool) { return 0, nil, false }}
	d.inv = New(d)
	start := time.Now()
	_, err := d.inv.Invoke(context.Background(), "d", "", Request{MethodName: "m", ResponseTimeoutInSeconds: intp(5)})
	if !errcode.Is(err, errcode.GatewayTimeout) {
		t.Fatalf("got %v", err)
	}
	if el := time.Since(start); el < 5*time.Second || el > 7*time.Second {
		t.Fatalf("timed out after %v", el)
	}
}

func TestRespondUnknownAndDuplicate(t *testing.T) {
	inv := New(&device{})
	if err := inv.Respond("d", "", "nope", 200, nil); err != ErrUnknownRequest {
		t.Fatalf("got %v", err)
	}
	d := &device{online: true}
	d.inv = New(d)
	d.answer = func(string, []byte) (int, []byte, bool) {
		// a device that answers twice: the first answer wins, the second is dropped
		return 200, []byte(`1`), true
	}
	res, err := d.inv.Invoke(context.Background(), "d", "m1", Request{MethodName: "x"})
	if err != nil || string(res.Payload) != "1" {
		t.Fatalf("got %+v %v", res, err)
	}
}
