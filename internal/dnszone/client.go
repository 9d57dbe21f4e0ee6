package dnszone

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/moat-iot/moat/internal/errcode"
)

// Client calls the zone API of a hub.
type Client struct {
	base      string
	hc        *http.Client
	authorize func(*http.Request) error
}

// NewClient returns a client for the API at baseURL ("https://hub:443").
// authorize adds credentials to each request (the CLI signs a service SAS).
func NewClient(baseURL string, hc *http.Client, authorize func(*http.Request) error) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimSuffix(baseURL, "/"), hc: hc, authorize: authorize}
}

func zonePath(zone string) string { return "/moat/dns/zones/" + url.PathEscape(zone) }

func recordPath(zone, typ, name string) string {
	if name == "" {
		name = "@"
	}
	return zonePath(zone) + "/records/" + url.PathEscape(strings.ToUpper(typ)) + "/" + url.PathEscape(name)
}

// Zones lists every zone.
func (c *Client) Zones(ctx context.Context) ([]Zone, error) {
	var out []Zone
	return out, c.do(ctx, http.MethodGet, "/moat/dns/zones", nil, nil, &out)
}

// Zone reads one zone.
func (c *Client) Zone(ctx context.Context, name string) (Zone, error) {
	var out Zone
	return out, c.do(ctx, http.MethodGet, zonePath(name), nil, nil, &out)
}

// PutZone creates or replaces a zone; with onlyCreate an existing zone is a
// PreconditionFailed error instead.
func (c *Client) PutZone(ctx context.Context, z Zone, onlyCreate bool) (Zone, error) {
	var h http.Header
	if onlyCreate {
		h = http.Header{"If-None-Match": {"*"}}
	}
	var out Zone
	return out, c.do(ctx, http.MethodPut, zonePath(z.Name), h, z, &out)
}

// DeleteZone removes a zone.
func (c *Client) DeleteZone(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, zonePath(name), nil, nil, nil)
}

// SetLinks replaces a zone's linked source networks.
func (c *Client) SetLinks(ctx context.Context, zone string, links []netip.Prefix) (Zone, error) {
	if links == nil {
		links = []netip.Prefix{}
	}
	var out Zone
	return out, c.do(ctx, http.MethodPut, zonePath(zone)+"/links", nil, links, &out)
}

// Records lists a zone's record sets.
func (c *Client) Records(ctx context.Context, zone string) ([]Record, error) {
	var out []Record
	return out, c.do(ctx, http.MethodGet, zonePath(zone)+"/records", nil, nil, &out)
}

// Record reads one record set.
func (c *Client) Record(ctx context.Context, zone, typ, name string) (Record, error) {
	var out Record
	return out, c.do(ctx, http.MethodGet, recordPath(zone, typ, name), nil, nil, &out)
}

// PutRecord creates or replaces one record set.
func (c *Client) PutRecord(ctx context.Context, zone string, r Record) (Record, error) {
	var out Record
	return out, c.do(ctx, http.MethodPut, recordPath(zone, r.Type, r.Name), nil, r, &out)
}

// DeleteRecord removes one record set.
func (c *Client) DeleteRecord(ctx context.Context, zone, typ, name string) error {
	return c.do(ctx, http.MethodDelete, recordPath(zone, typ, name), nil, nil, nil)
}

func (c *Client) do(ctx context.Context, method, path string, h http.Header, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("build %s request: %w", method, err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if c.authorize != nil {
		if err := c.authorize(req); err != nil {
			return fmt.Errorf("authorize request: %w", err)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxZoneBody*2))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return parseError(resp.StatusCode, resp.Header.Get(errorCodeHeader), b)
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode %s %s answer: %w", method, path, err)
		}
	}
	return nil
}

// knownCodes turn a code name from an answer back into the full code.
var knownCodes = map[string]errcode.Code{}

func init() {
	for _, c := range []errcode.Code{
		ZoneNotFound, RecordNotFound, errcode.ArgumentInvalid, errcode.InvalidOperation,
		errcode.IotHubUnauthorizedAccess, errcode.IotHubQuotaExceeded, errcode.PreconditionFailed,
		errcode.MessageTooLarge, errcode.ServerError, errcode.ServiceUnavailable,
	} {
		knownCodes[c.Name] = c
	}
}

// parseError turns an error answer into an *errcode.Error.
func parseError(status int, header string, body []byte) *errcode.Error {
	name, text := header, ""
	var eb errorBody
	if json.Unmarshal(body, &eb) == nil && strings.HasPrefix(eb.Message, "ErrorCode:") {
		n, t, _ := strings.Cut(strings.TrimPrefix(eb.Message, "ErrorCode:"), ";")
		name, text = n, t
	} else if len(body) > 0 {
		text = strings.TrimSpace(truncate(string(body), 512))
	}
	if text == "" {
		text = http.StatusText(status)
		if text == "" {
			text = "HTTP status " + strconv.Itoa(status)
		}
	}
	code, ok := knownCodes[name]
	if !ok {
		if name == "" {
			name = strings.ReplaceAll(http.StatusText(status), " ", "")
		}
		code = errcode.Code{Name: name, Status: status}
	}
	return &errcode.Error{Code: code, Message: text}
}
