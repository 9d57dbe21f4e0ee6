// Package events is the built-in "events" endpoint seen live: accepted telemetry
// fans out to every current reader (moat monitor-events), like IoT Hub's
// Event Hub-compatible endpoint read from "now". It is a live view, not the
// durable log: the endpoint's worker waits briefly for a slow reader, and a
// reader that stays behind loses messages and is told how many.
package events

import (
	"context"
	"sync"
	"time"

	"github.com/moat-iot/moat/internal/message"
)

// Event is one message as a reader sees it, or a gap notice.
type Event struct {
	Message message.Message
	// Dropped counts messages this reader missed just before this one because
	// it read too slowly. An Event with only Dropped set (no message) reports
	// losses at the end of a burst.
	Dropped int
}

// Stream fans messages out to readers.
type Stream struct {
	mu      sync.Mutex
	readers map[*reader]struct{}
}

type reader struct {
	ch chan Event
	mu sync.Mutex // guards dropped
	// dropped counts messages skipped since the last one delivered.
	dropped int
}

// take returns the loss count to report with the next event.
func (r *reader) take() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.dropped
	r.dropped = 0
	return n
}

func (r *reader) drop(n int) {
	r.mu.Lock()
	r.dropped += n
	r.mu.Unlock()
}

// New returns an empty stream.
func New() *Stream { return &Stream{readers: make(map[*reader]struct{})} }

// Publish hands m to every reader without blocking.
func (s *Stream) Publish(m message.Message) {
	s.PublishBatch(context.Background(), []message.Message{m}, 0)
}

// PublishBatch hands a batch to every reader, waiting up to wait in all for a
// reader whose buffer is full before it skips messages for that reader (no
// wait at all when wait is not positive). The
// caller (the events endpoint's worker, which reads the durable log) thereby
// slows to its readers' pace for short bursts instead of dropping at once;
// a reader slower than that for longer still loses messages and is told.
func (s *Stream) PublishBatch(ctx context.Context, batch []message.Message, wait time.Duration) {
	readers := s.current()
	if len(readers) == 0 {
		return
	}
	expired := wait <= 0
	var deadline <-chan time.Time
	if !expired {
		t := time.NewTimer(wait)
		defer t.Stop()
		deadline = t.C
	}
	for _, r := range readers {
		for _, m := range batch {
			d := r.take()
			select {
			case r.ch <- Event{Message: m, Dropped: d}:
				continue
			default:
			}
			if expired {
				r.drop(d + 1)
				continue
			}
			select {
			case r.ch <- Event{Message: m, Dropped: d}:
			case <-deadline:
				expired = true
				r.drop(d + 1)
			case <-ctx.Done():
				r.drop(d + 1)
				expired = true
			}
		}
	}
}

func (s *Stream) current() []*reader {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*reader, 0, len(s.readers))
	for r := range s.readers {
		out = append(out, r)
	}
	return out
}

// Readers is the number of current readers.
func (s *Stream) Readers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.readers)
}

// Subscribe returns a channel of events from now on, closed when ctx ends.
func (s *Stream) Subscribe(ctx context.Context, buffer int) <-chan Event {
	if buffer <= 0 {
		buffer = 1024
	}
	r := &reader{ch: make(chan Event, buffer)}
	s.mu.Lock()
	s.readers[r] = struct{}{}
	s.mu.Unlock()
	out := make(chan Event)
	go func() {
		defer close(out)
		defer func() {
			s.mu.Lock()
			delete(s.readers, r)
			s.mu.Unlock()
		}()
		// Losses are normally reported with the next message; when a burst
		// ends in losses there is no next message, so report them on a tick.
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if len(r.ch) > 0 {
					continue // the next message carries the count
				}
				if n := r.take(); n > 0 {
					select {
					case out <- Event{Dropped: n}:
					case <-ctx.Done():
						return
					}
				}
			case e := <-r.ch:
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}
