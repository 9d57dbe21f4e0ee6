package endpoint

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/moat-iot/moat/internal/message"
)

// WebhookConfig is an HTTPS endpoint that receives batches as JSON.
type WebhookConfig struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// Headers are added to every request (e.g. an API key). Their values are
	// secrets and never logged.
	Headers map[string]string `json:"headers,omitempty"`
	Timeout time.Duration     `json:"-"`
}

// Webhook posts each batch as a JSON array; any 2xx answer is success.
type Webhook struct {
	cfg    WebhookConfig
	client *http.Client
}

// NewWebhook returns a webhook sink; client may be nil for a default one.
func NewWebhook(cfg WebhookConfig, client *http.Client) *Webhook {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// A batch that fits the write buffer goes out without the 32 KiB
		// copy buffer net/http otherwise allocates for every request body.
		t.WriteBufferSize = 64 << 10
		client = &http.Client{Transport: t}
	}
	return &Webhook{cfg: cfg, client: client}
}

// WebhookRecord is one message in a webhook batch.
type WebhookRecord struct {
	SystemProperties map[string]string `json:"systemProperties"`
	Properties       map[string]string `json:"properties"`
	EnqueuedTimeUtc  time.Time         `json:"enqueuedTimeUtc"`
	// Body is the payload when it is valid JSON; otherwise BodyText (UTF-8)
	// or BodyBase64 carries it.
	Body       json.RawMessage `json:"body,omitempty"`
	BodyText   string          `json:"bodyText,omitempty"`
	BodyBase64 []byte          `json:"bodyBase64,omitempty"`
}

// Send implements Sink.
func (h *Webhook) Send(ctx context.Context, batch []message.Message) error {
	body := appendWebhookBatch(make([]byte, 0, webhookBatchSize(batch)), batch)
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook %s: %w", h.cfg.Name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range h.cfg.Headers {
		req.Header.Set(k, v)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook %s: %w", h.cfg.Name, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64*1024))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook %s: answered %s", h.cfg.Name, resp.Status)
	}
	return nil
}

// Close implements Sink.
func (h *Webhook) Close() error {
	h.client.CloseIdleConnections()
	return nil
}

// appendWebhookBatch writes batch as the JSON array of WebhookRecord that
// json.Marshal would give, up to insignificant differences: a JSON body is
// copied as it came (Marshal would compact it) and strings escape only what
// JSON requires (Marshal also escapes <, > and &). Marshal's reflection and
// its second pass over every body were a tenth of the hub's CPU on a routed
// stream.
func appendWebhookBatch(b []byte, batch []message.Message) []byte {
	b = append(b, '[')
	for i, m := range batch {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"systemProperties":`...)
		b = appendStringMap(b, m.System)
		b = append(b, `,"properties":`...)
		b = appendStringMap(b, m.Properties)
		b = append(b, `,"enqueuedTimeUtc":"`...)
		b = m.Enqueued.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
		switch {
		case len(m.Body) == 0:
		case validJSON(m.Body):
			b = append(b, `,"body":`...)
			b = append(b, m.Body...)
		case utf8.Valid(m.Body):
			b = append(b, `,"bodyText":`...)
			b = appendJSONString(b, string(m.Body))
		default:
			b = append(b, `,"bodyBase64":"`...)
			b = base64.StdEncoding.AppendEncode(b, m.Body)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	return append(b, ']')
}

// webhookBatchSize is about the size of batch's encoding, so that the buffer
// is allocated once (escapes and base64 may still grow it).
func webhookBatchSize(batch []message.Message) int {
	n := 2
	for _, m := range batch {
		n += 128 + len(m.Body) + len(m.Body)/3
		for _, props := range []map[string]string{m.System, m.Properties} {
			for k, v := range props {
				n += len(k) + len(v) + 6
			}
		}
	}
	return n
}

// appendStringMap writes m as a JSON object with sorted keys (null if nil).
func appendStringMap(b []byte, m map[string]string) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	var buf [16]string // messages carry a handful of properties: no allocation
	keys := buf[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, m[k])
	}
	return append(b, '}')
}

// appendJSONString writes s as a JSON string; invalid UTF-8 becomes U+FFFD,
// as with json.Marshal.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
