// Package c2d holds cloud-to-device queues: one ordered queue per device, IoT
// Hub's limits (50 pending, 64 KB, TTL up to 48 h, 10 deliveries), durable before
// the service caller is answered, and completion when the device acknowledges.
// Delivery itself belongs to the device transport, which asks for pending
// messages when a device is reachable and completes them on its acknowledgement.
package c2d

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/message"
)

// IoT Hub's cloud-to-device limits.
const (
	MaxPending       = 50
	MaxMessageSize   = 64 * 1024
	DefaultTTL       = time.Hour
	MaxTTL           = 48 * time.Hour
	MaxDeliveryCount = 10
)

// Entry is one queued message.
type Entry struct {
	Seq           uint64
	DeviceID      string
	Message       message.Message
	Expiry        time.Time
	DeliveryCount int
}

// Store is the persistence seam of the queues (SQLite here; JetStream later).
type Store interface {
	// Enqueue appends e for its device unless the device already has max
	// pending entries (then ErrQueueFull). It assigns e.Seq.
	Enqueue(ctx context.Context, e *Entry, max int) error
	// Pending lists a device's entries in order.
	Pending(ctx context.Context, deviceID string) ([]Entry, error)
	// MarkDelivered increments an entry's delivery count.
	MarkDelivered(ctx context.Context, deviceID string, seq uint64) error
	// Remove deletes one entry (completed, expired or dead).
	Remove(ctx context.Context, deviceID string, seq uint64) error
	// Purge deletes all of a device's entries and says how many there were.
	Purge(ctx context.Context, deviceID string) (int, error)
	// Count is a device's queue depth.
	Count(ctx context.Context, deviceID string) (int, error)
	Close() error
}

// ErrQueueFull is returned by Store.Enqueue when the device's queue is full.
var ErrQueueFull = fmt.Errorf("c2d: queue full")

// Queue is the hub's cloud-to-device service.
type Queue struct {
	store  Store
	log    *slog.Logger
	now    func() time.Time
	notify func(deviceID string)
}

// New returns a Queue over store. notify, if set, is called after a message is
// enqueued so the transport can deliver it to a connected device.
func New(store Store, log *slog.Logger, notify func(deviceID string)) *Queue {
	if log == nil {
		log = slog.Default()
	}
	return &Queue{store: store, log: log, now: time.Now, notify: notify}
}

// SetNotify sets the enqueue callback (the transport is built after the queue).
func (q *Queue) SetNotify(fn func(deviceID string)) { q.notify = fn }

// Send enqueues m for deviceID. The caller has checked that the device exists.
func (q *Queue) Send(ctx context.Context, deviceID string, m message.Message) (Entry, error) {
	size := len(m.Body)
	for k, v := range m.Properties {
		size += len(k) + len(v)
	}
	for k, v := range m.System {
		size += len(k) + len(v)
	}
	if size > MaxMessageSize {
		return Entry{}, errcode.New(errcode.MessageTooLarge, "cloud-to-device message exceeds %d bytes", MaxMessageSize)
	}
	now := q.now().UTC()
	expiry := now.Add(DefaultTTL)
	if s := m.System[message.SysExpiry]; s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return Entry{}, errcode.New(errcode.ArgumentInvalid, "absolute expiry time %q is not an RFC 3339 time", s)
		}
		if t.After(now.Add(MaxTTL)) {
			t = now.Add(MaxTTL)
		}
		expiry = t.UTC()
	}
	if m.System == nil {
		m.System = map[string]string{}
	}
	if m.System[message.SysMessageID] == "" {
		m.System[message.SysMessageID] = newID()
	}
	m.System[message.SysTo] = "/devices/" + deviceID + "/messages/deviceBound"
	m.Enqueued = now
	e := Entry{DeviceID: deviceID, Message: m, Expiry: expiry}
	if err := q.store.Enqueue(ctx, &e, MaxPending); err != nil {
		if err == ErrQueueFull {
			return Entry{}, errcode.New(errcode.DeviceMaxQueueDepthExceeded, "device %s has %d pending cloud-to-device messages", deviceID, MaxPending)
		}
		return Entry{}, fmt.Errorf("enqueue cloud-to-device message: %w", err)
	}
	if q.notify != nil {
		q.notify(deviceID)
	}
	return e, nil
}

// Deliverable returns the device's messages to send now, except those for which
// skip (if set) says they are already in flight. It drops the expired and those
// delivered MaxDeliveryCount times, and counts the delivery of each returned
// entry.
func (q *Queue) Deliverable(ctx context.Context, deviceID string, skip func(seq uint64) bool) ([]Entry, error) {
	all, err := q.store.Pending(ctx, deviceID)
	if err != nil {
		return nil, fmt.Errorf("list cloud-to-device messages: %w", err)
	}
	now := q.now()
	out := all[:0]
	for _, e := range all {
		if skip != nil && skip(e.Seq) {
			continue
		}
		switch {
		case !e.Expiry.After(now):
			q.log.Info("cloud-to-device message expired", "device", deviceID, "messageId", e.Message.System[message.SysMessageID])
		case e.DeliveryCount >= MaxDeliveryCount:
			q.log.Warn("cloud-to-device message dead-lettered after too many deliveries", "device", deviceID, "messageId", e.Message.System[message.SysMessageID])
		default:
			if err := q.store.MarkDelivered(ctx, deviceID, e.Seq); err != nil {
				return nil, fmt.Errorf("mark cloud-to-device message delivered: %w", err)
			}
			e.DeliveryCount++
			out = append(out, e)
			continue
		}
		if err := q.store.Remove(ctx, deviceID, e.Seq); err != nil {
			return nil, fmt.Errorf("drop cloud-to-device message: %w", err)
		}
	}
	return out, nil
}

// Complete removes a message the device acknowledged.
func (q *Queue) Complete(ctx context.Context, deviceID string, seq uint64) error {
	if err := q.store.Remove(ctx, deviceID, seq); err != nil {
		return fmt.Errorf("complete cloud-to-device message: %w", err)
	}
	return nil
}

// Purge empties a device's queue (DELETE /devices/{id}/commands).
func (q *Queue) Purge(ctx context.Context, deviceID string) (int, error) {
	n, err := q.store.Purge(ctx, deviceID)
	if err != nil {
		return 0, fmt.Errorf("purge cloud-to-device queue: %w", err)
	}
	return n, nil
}

// Count is a device's queue depth (cloudToDeviceMessageCount).
func (q *Queue) Count(ctx context.Context, deviceID string) (int, error) {
	n, err := q.store.Count(ctx, deviceID)
	if err != nil {
		return 0, fmt.Errorf("count cloud-to-device messages: %w", err)
	}
	return n, nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
