package c2d

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/message"
)

func newQueue(t *testing.T) (*Queue, *SQLiteStore, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c2d.db")
	st, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return New(st, nil, nil), st, path
}

func TestSendAndDeliver(t *testing.T) {
	ctx := context.Background()
	q, _, _ := newQueue(t)
	var notified []string
	q.SetNotify(func(d string) { notified = append(notified, d) })
	e, err := q.Send(ctx, "d1", message.Message{Body: []byte("hi"), Properties: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if e.Message.System[message.SysMessageID] == "" || e.Message.System[message.SysTo] != "/devices/d1/messages/deviceBound" {
		t.Fatalf("system properties not set: %v", e.Message.System)
	}
	if len(notified) != 1 || notified[0] != "d1" {
		t.Fatalf("notify: %v", notified)
	}
	got, err := q.Deliverable(ctx, "d1", nil)
	if err != nil || len(got) != 1 || string(got[0].Message.Body) != "hi" || got[0].DeliveryCount != 1 {
		t.Fatalf("deliverable: %+v %v", got, err)
	}
	// skip hides what is in flight
	if got, _ := q.Deliverable(ctx, "d1", func(uint64) bool { return true }); len(got) != 0 {
		t.Fatalf("skip ignored: %+v", got)
	}
	if err := q.Complete(ctx, "d1", got0(t, q, "d1").Seq); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.Count(ctx, "d1"); n != 0 {
		t.Fatalf("count after complete = %d", n)
	}
}

func got0(t *testing.T, q *Queue, d string) Entry {
	t.Helper()
	all, err := q.store.Pending(context.Background(), d)
	if err != nil || len(all) == 0 {
		t.Fatalf("pending: %v %v", all, err)
	}
	return all[0]
}

func TestLimits(t *testing.T) {
	ctx := context.Background()
	q, _, _ := newQueue(t)
	if _, err := q.Send(ctx, "d", message.Message{Body: []byte(strings.Repeat("x", MaxMessageSize+1))}); !errcode.Is(err, errcode.MessageTooLarge) {
		t.Fatalf("oversize: %v", err)
	}
	for i := 0; i < MaxPending; i++ {
		if _, err := q.Send(ctx, "d", message.Message{Body: []byte("x")}); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if _, err := q.Send(ctx, "d", message.Message{Body: []byte("x")}); !errcode.Is(err, errcode.DeviceMaxQueueDepthExceeded) {
		t.Fatalf("51st: %v", err)
	}
	// another device's queue is independent
	if _, err := q.Send(ctx, "other", message.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Purge(ctx, "d"); err != nil || n != MaxPending {
		t.Fatalf("purge = %d, %v", n, err)
	}
	if _, err := q.Send(ctx, "d", message.Message{System: map[string]string{message.SysExpiry: "yesterday"}}); !errcode.Is(err, errcode.ArgumentInvalid) {
		t.Fatalf("bad expiry: %v", err)
	}
}

func TestExpiryAndDeadLetter(t *testing.T) {
	ctx := context.Background()
	q, _, _ := newQueue(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q.now = func() time.Time { return now }
	if _, err := q.Send(ctx, "d", message.Message{Body: []byte("old"), System: map[string]string{message.SysExpiry: now.Add(time.Minute).Format(time.RFC3339)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Send(ctx, "d", message.Message{Body: []byte("far"), System: map[string]string{message.SysExpiry: now.Add(100 * time.Hour).Format(time.RFC3339)}}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	got, err := q.Deliverable(ctx, "d", nil)
	if err != nil || len(got) != 1 || string(got[0].Message.Body) != "far" {
		t.Fatalf("after expiry: %+v %v", got, err)
	}
	if !got[0].Expiry.Equal(now.Add(-2 * time.Minute).Add(MaxTTL)) {
		t.Fatalf("expiry not capped at 48 h: %v", got[0].Expiry)
	}
	for i := 1; i < MaxDeliveryCount; i++ {
		if got, _ := q.Deliverable(ctx, "d", nil); len(got) != 1 {
			t.Fatalf("delivery %d: %d entries", i+1, len(got))
		}
	}
	if got, _ := q.Deliverable(ctx, "d", nil); len(got) != 0 {
		t.Fatalf("delivered past MaxDeliveryCount: %+v", got)
	}
	if n, _ := q.Count(ctx, "d"); n != 0 {
		t.Fatalf("dead message still queued: %d", n)
	}
}

func TestDurableAcrossReopen(t *testing.T) {
	ctx := context.Background()
	q, st, path := newQueue(t)
	if _, err := q.Send(ctx, "d", message.Message{Body: []byte("keep"), Properties: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st2, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	got, err := New(st2, nil, nil).Deliverable(ctx, "d", nil)
	if err != nil || len(got) != 1 || string(got[0].Message.Body) != "keep" || got[0].Message.Properties["k"] != "v" {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
}
