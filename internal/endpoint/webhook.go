package endpoint

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
		client = &http.Client{}
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
	recs := make([]WebhookRecord, len(batch))
	for i, m := range batch {
		r := WebhookRecord{SystemProperties: m.System, Properties: m.Properties, EnqueuedTimeUtc: m.Enqueued.UTC()}
		switch {
		case len(m.Body) > 0 && json.Valid(m.Body):
			r.Body = m.Body
		case utf8.Valid(m.Body):
			r.BodyText = string(m.Body)
		default:
			r.BodyBase64 = m.Body
		}
		recs[i] = r
	}
	body, err := json.Marshal(recs)
	if err != nil {
		return fmt.Errorf("webhook %s: encode: %w", h.cfg.Name, err)
	}
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
