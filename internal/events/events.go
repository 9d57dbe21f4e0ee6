// Package events is the built-in "events" endpoint seen live: accepted telemetry
// fans out to every current reader (moat monitor-events), like IoT Hub's
// Event Hub-compatible endpoint read from "now". It is a live view, not the
// durable log: a reader that falls behind loses messages and is told how many.
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
	ch      chan Event
	dropped int
}

// New returns an empty stream.
func New() *Stream { return &Stream{readers: make(map[*reader]struct{})} }

// Publish hands m to every reader without blocking.
func (s *Stream) Publish(m message.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for r := range s.readers {
		select {
		case r.ch <- Event{Message: m, Dropped: r.dropped}:
			r.dropped = 0
		default:
			r.dropped++
		}
	}
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
				s.mu.Lock()
				n := r.dropped
				r.dropped = 0
				s.mu.Unlock()
				if n > 0 {
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
