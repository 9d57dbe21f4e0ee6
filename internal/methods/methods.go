// Package methods correlates direct-method invocations with device responses: a
// service caller waits for the one answer whose request id matches, within the
// caller's connect and response timeouts, as IoT Hub's POST /twins/{id}/methods.
package methods

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
)

// Limits of IoT Hub's direct methods.
const (
	MinResponseTimeout     = 5 * time.Second
	MaxResponseTimeout     = 300 * time.Second
	DefaultResponseTimeout = 30 * time.Second
	MaxConnectTimeout      = 300 * time.Second
	MaxPayload             = 128 * 1024
)

// Request is the body of POST /twins/{id}/methods.
type Request struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds *int            `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  *int            `json:"connectTimeoutInSeconds"`
}

// Result is the answer: the device's status and payload, passed through as sent.
type Result struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// Transport delivers a request to the identity's live connection.
type Transport interface {
	// SendMethod publishes the request. It returns an error carrying
	// errcode.DeviceNotOnline when the identity is not connected and subscribed to
	// methods.
	SendMethod(deviceID, moduleID, name, rid string, payload []byte) error
}

type key struct{ device, module, rid string }

// Invoker runs invocations. The zero value is not usable; call New.
type Invoker struct {
	transport Transport
	seq       atomic.Uint64
	mu        sync.Mutex
	pending   map[key]chan Result
}

// New returns an Invoker that sends through t.
func New(t Transport) *Invoker {
	return &Invoker{transport: t, pending: make(map[key]chan Result)}
}

// Invoke sends req to the identity and waits for its answer: 404103
// DeviceNotOnline when it is not connected within the connect timeout, 504
// GatewayTimeout when it does not answer within the response timeout.
func (i *Invoker) Invoke(ctx context.Context, deviceID, moduleID string, req Request) (Result, error) {
	if req.MethodName == "" || len(req.MethodName) > 256 {
		return Result{}, errcode.New(errcode.ArgumentInvalid, "methodName must be 1 to 256 characters")
	}
	respTimeout := DefaultResponseTimeout
	if req.ResponseTimeoutInSeconds != nil {
		respTimeout = time.Duration(*req.ResponseTimeoutInSeconds) * time.Second
		if respTimeout < MinResponseTimeout || respTimeout > MaxResponseTimeout {
			return Result{}, errcode.New(errcode.ArgumentInvalid, "responseTimeoutInSeconds must be between %d and %d", int(MinResponseTimeout.Seconds()), int(MaxResponseTimeout.Seconds()))
		}
	}
	var connTimeout time.Duration
	if req.ConnectTimeoutInSeconds != nil {
		connTimeout = time.Duration(*req.ConnectTimeoutInSeconds) * time.Second
		if connTimeout < 0 || connTimeout > MaxConnectTimeout {
			return Result{}, errcode.New(errcode.ArgumentInvalid, "connectTimeoutInSeconds must be between 0 and %d", int(MaxConnectTimeout.Seconds()))
		}
	}
	payload := []byte(req.Payload)
	if len(payload) == 0 {
		payload = []byte("null")
	}
	if len(payload) > MaxPayload {
		return Result{}, errcode.New(errcode.MessageTooLarge, "method payload exceeds %d bytes", MaxPayload)
	}
	if !json.Valid(payload) {
		return Result{}, errcode.New(errcode.ArgumentInvalid, "payload is not valid JSON")
	}

	k := key{deviceID, moduleID, strconv.FormatUint(i.seq.Add(1), 10)}
	ch := make(chan Result, 1)
	i.mu.Lock()
	i.pending[k] = ch
	i.mu.Unlock()
	defer func() {
		i.mu.Lock()
		delete(i.pending, k)
		i.mu.Unlock()
	}()

	if err := i.sendWithin(ctx, k, req.MethodName, payload, connTimeout); err != nil {
		return Result{}, err
	}
	timer := time.NewTimer(respTimeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r, nil
	case <-timer.C:
		return Result{}, errcode.New(errcode.GatewayTimeout, "timed out waiting for the response from device %s", deviceID)
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// sendWithin retries while the identity is offline, for up to connTimeout, so a
// device that is reconnecting (e.g. renewing its token) still gets the call.
func (i *Invoker) sendWithin(ctx context.Context, k key, name string, payload []byte, connTimeout time.Duration) error {
	deadline := time.Now().Add(connTimeout)
	for {
		err := i.transport.SendMethod(k.device, k.module, name, k.rid, payload)
		if err == nil || !errcode.Is(err, errcode.DeviceNotOnline) || !time.Now().Before(deadline) {
			return err
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// ErrUnknownRequest means a response matched no waiting invocation (late or
// forged); the transport drops it.
var ErrUnknownRequest = errors.New("methods: no pending request with that id")

// Respond delivers a device's answer. Payloads that are not JSON are passed on
// as a JSON string so the service caller always receives valid JSON.
func (i *Invoker) Respond(deviceID, moduleID, rid string, status int, payload []byte) error {
	i.mu.Lock()
	ch, ok := i.pending[key{deviceID, moduleID, rid}]
	i.mu.Unlock()
	if !ok {
		return ErrUnknownRequest
	}
	var p json.RawMessage
	switch {
	case len(payload) == 0:
		p = json.RawMessage("null")
	case json.Valid(payload):
		p = json.RawMessage(append([]byte(nil), payload...))
	default:
		b, _ := json.Marshal(string(payload))
		p = b
	}
	select {
	case ch <- Result{Status: status, Payload: p}:
	default: // a duplicate answer; the first one won
	}
	return nil
}
