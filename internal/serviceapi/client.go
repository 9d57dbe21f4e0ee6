package serviceapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
	"github.com/moat-iot/moat/internal/twin"
)

// APIVersion is the api-version the client sends (the Node SDK's).
const APIVersion = "2021-04-12"

// tokenLifetime is how long each per-request token is valid, as in the SDKs.
const tokenLifetime = time.Hour

// ClientOptions adjusts how a Client reaches the hub.
type ClientOptions struct {
	// Address is "host:port" to dial instead of HostName:443; TLS still
	// verifies the certificate for HostName.
	Address string
	// RootCAs verifies the hub's certificate; nil means the system pool.
	RootCAs *x509.CertPool
	// HTTPClient, if set, is used as is (RootCAs is then ignored) and
	// requests go to https://{Address or HostName}/.
	HTTPClient *http.Client
}

// Client calls the service API with a shared access policy's credentials. It
// is safe for concurrent use.
type Client struct {
	cs   ConnectionString
	base string
	hc   *http.Client
	now  func() time.Time
}

// NewClient returns a client for a service connection string
// ("HostName=…;SharedAccessKeyName=…;SharedAccessKey=…").
func NewClient(connString string, opts ClientOptions) (*Client, error) {
	cs, err := ParseConnectionString(connString)
	if err != nil {
		return nil, err
	}
	c := &Client{cs: cs, now: time.Now}
	if opts.HTTPClient != nil {
		host := cs.HostName
		if opts.Address != "" {
			host = opts.Address
		}
		c.base, c.hc = "https://"+host, opts.HTTPClient
		return c, nil
	}
	serverName := cs.HostName
	if h, _, err := net.SplitHostPort(cs.HostName); err == nil {
		serverName = h
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: opts.RootCAs, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if opts.Address != "" {
		addr := opts.Address
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}
	}
	c.base, c.hc = "https://"+cs.HostName, &http.Client{Transport: tr}
	return c, nil
}

// HostName is the hub the client talks to.
func (c *Client) HostName() string { return c.cs.HostName }

// seg escapes one path segment as the Node SDK does (encodeURIComponent and
// then some), so ids with '/', '%', '$', '#' or '?' arrive intact.
func seg(s string) string { return sas.EncodeURIComponentStrict(s) }

type call struct {
	method string
	path   string // already escaped
	query  url.Values
	header http.Header
	body   io.Reader
	json   bool // body is JSON
}

// send makes one authenticated request and returns the response if it
// succeeded (2xx); otherwise the hub's error as an *errcode.Error.
func (c *Client) send(ctx context.Context, cl call) (*http.Response, error) {
	q := cl.query
	if q == nil {
		q = url.Values{}
	}
	q.Set("api-version", APIVersion)
	req, err := http.NewRequestWithContext(ctx, cl.method, c.base+cl.path+"?"+q.Encode(), cl.body)
	if err != nil {
		return nil, fmt.Errorf("build %s request: %w", cl.method, err)
	}
	for k, vs := range cl.header {
		req.Header[k] = vs
	}
	tok, err := sas.Sign(c.cs.HostName, c.cs.SharedAccessKeyName, c.cs.SharedAccessKey, c.now().Add(tokenLifetime))
	if err != nil {
		return nil, fmt.Errorf("sign request: %w", err)
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Request-Id", requestID())
	req.Header.Set("User-Agent", "moat-serviceapi")
	req.Header.Set("Accept", "application/json")
	if cl.json {
		req.Header.Set("Content-Type", contentTypeJSON)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", cl.method, c.cs.HostName, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return nil, ParseErrorResponse(resp.StatusCode, resp.Header.Get(headerErrorCode), b)
}

// do sends in as JSON (nil: no body) and decodes the answer into out (nil:
// discard). It returns the response headers.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, header http.Header, in, out any) (http.Header, error) {
	cl := call{method: method, path: path, query: query, header: header}
	if in != nil {
		var b []byte
		switch v := in.(type) {
		case json.RawMessage:
			b = v
		default:
			var err error
			if b, err = json.Marshal(in); err != nil {
				return nil, fmt.Errorf("encode request: %w", err)
			}
		}
		cl.body, cl.json = bytes.NewReader(b), true
	}
	resp, err := c.send(ctx, cl)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return nil, fmt.Errorf("decode %s %s answer: %w", method, path, err)
		}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64*1024)) // keep the connection reusable
	return resp.Header, nil
}

func ifMatch(etag string, wildcardIfEmpty bool) http.Header {
	switch {
	case etag == "" && !wildcardIfEmpty:
		return nil
	case etag == "":
		etag = "*"
	}
	if !strings.HasPrefix(etag, `"`) {
		etag = `"` + etag + `"`
	}
	return http.Header{"If-Match": {etag}}
}

func devicePath(id string) string { return "/devices/" + seg(id) }

func modulePath(deviceID, moduleID string) string {
	return devicePath(deviceID) + "/modules/" + seg(moduleID)
}

func twinPath(deviceID, moduleID string) string {
	p := "/twins/" + seg(deviceID)
	if moduleID != "" {
		p += "/modules/" + seg(moduleID)
	}
	return p
}

// CreateDevice creates a device; empty keys are generated by the hub.
func (c *Client) CreateDevice(ctx context.Context, d registry.Device) (registry.Device, error) {
	var out registry.Device
	_, err := c.do(ctx, http.MethodPut, devicePath(d.DeviceID), nil, nil, d, &out)
	return out, err
}

// UpdateDevice updates a device if its etag still matches ("" or "*": always).
func (c *Client) UpdateDevice(ctx context.Context, d registry.Device, etag string) (registry.Device, error) {
	var out registry.Device
	_, err := c.do(ctx, http.MethodPut, devicePath(d.DeviceID), nil, ifMatch(etag, true), d, &out)
	return out, err
}

// GetDevice returns a device.
func (c *Client) GetDevice(ctx context.Context, id string) (registry.Device, error) {
	var out registry.Device
	_, err := c.do(ctx, http.MethodGet, devicePath(id), nil, nil, nil, &out)
	return out, err
}

// DeleteDevice deletes a device if its etag still matches ("" or "*": always).
func (c *Client) DeleteDevice(ctx context.Context, id, etag string) error {
	_, err := c.do(ctx, http.MethodDelete, devicePath(id), nil, ifMatch(etag, true), nil, nil)
	return err
}

// ListDevices lists up to top devices (top <= 0: the hub's default).
func (c *Client) ListDevices(ctx context.Context, top int) ([]registry.Device, error) {
	var q url.Values
	if top > 0 {
		q = url.Values{"top": {strconv.Itoa(top)}}
	}
	var out []registry.Device
	_, err := c.do(ctx, http.MethodGet, "/devices/", q, nil, nil, &out)
	return out, err
}

// Bulk applies up to 100 create/update/delete operations.
func (c *Client) Bulk(ctx context.Context, ops []registry.BulkOp) (registry.BulkResult, error) {
	var out registry.BulkResult
	_, err := c.do(ctx, http.MethodPost, "/devices", nil, nil, ops, &out)
	return out, err
}

// DeviceStatistics counts the registry's devices.
func (c *Client) DeviceStatistics(ctx context.Context) (registry.Statistics, error) {
	var out registry.Statistics
	_, err := c.do(ctx, http.MethodGet, "/statistics/devices", nil, nil, nil, &out)
	return out, err
}

// ServiceStatistics reports the connected-device count.
func (c *Client) ServiceStatistics(ctx context.Context) (ServiceStatistics, error) {
	var out ServiceStatistics
	_, err := c.do(ctx, http.MethodGet, "/statistics/service", nil, nil, nil, &out)
	return out, err
}

// CreateModule creates a module on an existing device.
func (c *Client) CreateModule(ctx context.Context, m registry.Module) (registry.Module, error) {
	var out registry.Module
	_, err := c.do(ctx, http.MethodPut, modulePath(m.DeviceID, m.ModuleID), nil, nil, m, &out)
	return out, err
}

// UpdateModule updates a module if its etag still matches ("" or "*": always).
func (c *Client) UpdateModule(ctx context.Context, m registry.Module, etag string) (registry.Module, error) {
	var out registry.Module
	_, err := c.do(ctx, http.MethodPut, modulePath(m.DeviceID, m.ModuleID), nil, ifMatch(etag, true), m, &out)
	return out, err
}

// GetModule returns a module.
func (c *Client) GetModule(ctx context.Context, deviceID, moduleID string) (registry.Module, error) {
	var out registry.Module
	_, err := c.do(ctx, http.MethodGet, modulePath(deviceID, moduleID), nil, nil, nil, &out)
	return out, err
}

// DeleteModule deletes a module if its etag still matches ("" or "*": always).
func (c *Client) DeleteModule(ctx context.Context, deviceID, moduleID, etag string) error {
	_, err := c.do(ctx, http.MethodDelete, modulePath(deviceID, moduleID), nil, ifMatch(etag, true), nil, nil)
	return err
}

// ListModules lists a device's modules.
func (c *Client) ListModules(ctx context.Context, deviceID string) ([]registry.Module, error) {
	var out []registry.Module
	_, err := c.do(ctx, http.MethodGet, devicePath(deviceID)+"/modules", nil, nil, nil, &out)
	return out, err
}

// GetTwin returns a device twin (moduleID "") or a module twin.
func (c *Client) GetTwin(ctx context.Context, deviceID, moduleID string) (twin.Twin, error) {
	var out twin.Twin
	_, err := c.do(ctx, http.MethodGet, twinPath(deviceID, moduleID), nil, nil, nil, &out)
	return out, err
}

// PatchTwin merges patch ({"tags":…,"properties":{"desired":…}}) into a twin,
// if its etag still matches (""; unconditionally), and returns the new twin.
func (c *Client) PatchTwin(ctx context.Context, deviceID, moduleID string, patch json.RawMessage, etag string) (twin.Twin, error) {
	var out twin.Twin
	_, err := c.do(ctx, http.MethodPatch, twinPath(deviceID, moduleID), nil, ifMatch(etag, false), patch, &out)
	return out, err
}

// ReplaceTwin replaces a twin's tags and desired properties.
func (c *Client) ReplaceTwin(ctx context.Context, deviceID, moduleID string, doc json.RawMessage, etag string) (twin.Twin, error) {
	var out twin.Twin
	_, err := c.do(ctx, http.MethodPut, twinPath(deviceID, moduleID), nil, ifMatch(etag, false), doc, &out)
	return out, err
}

// QueryPage is one page of query results.
type QueryPage struct {
	Items []json.RawMessage
	// Continuation fetches the next page; "" on the last page.
	Continuation string
	// ItemType is the hub's x-ms-item-type ("Twin", "Raw", …).
	ItemType string
}

// Query runs one page of an IoT Hub query (pageSize <= 0: the hub's default;
// continuation "" for the first page).
func (c *Client) Query(ctx context.Context, q string, pageSize int, continuation string) (QueryPage, error) {
	h := http.Header{}
	if pageSize > 0 {
		h.Set(headerMaxItemCount, strconv.Itoa(pageSize))
	}
	if continuation != "" {
		h.Set(headerContinuation, continuation)
	}
	var page QueryPage
	rh, err := c.do(ctx, http.MethodPost, "/devices/query", nil, h, map[string]string{"query": q}, &page.Items)
	if err != nil {
		return QueryPage{}, err
	}
	page.Continuation, page.ItemType = rh.Get(headerContinuation), rh.Get(headerItemType)
	return page, nil
}

// QueryAll runs a query to its last page. limit > 0 stops after that many
// items, so a careless query cannot exhaust memory.
func (c *Client) QueryAll(ctx context.Context, q string, pageSize, limit int) ([]json.RawMessage, error) {
	var all []json.RawMessage
	cont := ""
	for {
		p, err := c.Query(ctx, q, pageSize, cont)
		if err != nil {
			return all, err
		}
		all = append(all, p.Items...)
		if limit > 0 && len(all) >= limit {
			return all[:limit], nil
		}
		if p.Continuation == "" {
			return all, nil
		}
		cont = p.Continuation
	}
}

// InvokeMethod calls a direct method on a device (moduleID "") or module and
// returns the device's status and payload.
func (c *Client) InvokeMethod(ctx context.Context, deviceID, moduleID string, req methods.Request) (methods.Result, error) {
	var out methods.Result
	_, err := c.do(ctx, http.MethodPost, twinPath(deviceID, moduleID)+"/methods", nil, nil, req, &out)
	return out, err
}

// SendC2D queues a cloud-to-device message. m.System may set message-id,
// correlation-id, user-id, absolute-expiry-time (RFC 3339), iothub-ack,
// content-type and content-encoding; m.Properties are application properties.
func (c *Client) SendC2D(ctx context.Context, deviceID string, m message.Message) error {
	h, err := c2dHeader(m)
	if err != nil {
		return err
	}
	resp, err := c.send(ctx, call{
		method: http.MethodPost,
		path:   devicePath(deviceID) + "/messages/deviceBound",
		header: h,
		body:   bytes.NewReader(m.Body),
	})
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64*1024))
	return resp.Body.Close()
}

// PurgeC2D deletes a device's pending cloud-to-device messages.
func (c *Client) PurgeC2D(ctx context.Context, deviceID string) (PurgeResult, error) {
	var out PurgeResult
	_, err := c.do(ctx, http.MethodDelete, devicePath(deviceID)+"/commands", nil, nil, nil, &out)
	return out, err
}

// maxEventLine bounds one NDJSON line: a 256 KiB message, base64-encoded,
// with its properties.
const maxEventLine = 1 << 20

// ErrStreamEnded means the hub closed the events stream.
var ErrStreamEnded = errors.New("serviceapi: the hub ended the events stream")

// MonitorEvents reads live telemetry (of one device, or all when deviceID is
// "") and calls fn for each record until ctx ends (it then returns ctx.Err()),
// fn returns an error (returned as is), or the stream fails.
func (c *Client) MonitorEvents(ctx context.Context, deviceID string, fn func(EventRecord) error) error {
	return c.MonitorEventsReady(ctx, deviceID, nil, fn)
}

// MonitorEventsReady is MonitorEvents that also calls ready (if set) once the
// hub has opened the stream, so a caller can tell when messages sent from then
// on will be seen.
func (c *Client) MonitorEventsReady(ctx context.Context, deviceID string, ready func(), fn func(EventRecord) error) error {
	var q url.Values
	if deviceID != "" {
		q = url.Values{"deviceId": {deviceID}}
	}
	resp, err := c.send(ctx, call{method: http.MethodGet, path: "/moat/events", query: q})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if ready != nil {
		ready()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), maxEventLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec EventRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("events stream: bad record: %w", err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("events stream: %w", err)
	}
	return ErrStreamEnded
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
