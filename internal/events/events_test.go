package events

import (
	"context"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/message"
)

func TestFanOutAndDrops(t *testing.T) {
	s := New()
	ctx, cancel := context.WithCancel(context.Background())
	fast := s.Subscribe(ctx, 16)
	slow := s.Subscribe(ctx, 2)
	deadline := time.Now().Add(2 * time.Second)
	for s.Readers() != 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	// The fast reader drains as we publish; the slow one reads nothing yet.
	got := 0
	for i := 0; i < 10; i++ {
		s.Publish(message.Message{Body: []byte{byte(i)}})
		select {
		case e := <-fast:
			if e.Message.Body[0] != byte(i) || e.Dropped != 0 {
				t.Fatalf("fast reader got %v dropped %d", e.Message.Body, e.Dropped)
			}
			got++
		case <-time.After(2 * time.Second):
			t.Fatal("fast reader starved")
		}
	}
	if got != 10 {
		t.Fatalf("fast reader got %d", got)
	}
	// The slow reader holds at most its buffer plus one in hand, and is told
	// how many it missed with the next message it gets.
	var seen []byte
	dropped := 0
	timeout := time.After(2 * time.Second)
	for len(seen) == 0 || seen[len(seen)-1] != 99 {
		select {
		case e := <-slow:
			dropped += e.Dropped
			if e.Message.Body == nil {
				continue // a loss report on the tick
			}
			seen = append(seen, e.Message.Body[0])
		case <-timeout:
			t.Fatalf("slow reader got %v", seen)
		}
		if len(seen) == 2 {
			s.Publish(message.Message{Body: []byte{99}})
		}
	}
	if dropped == 0 || len(seen)+dropped != 11 {
		t.Fatalf("slow reader saw %v with %d dropped", seen, dropped)
	}
	cancel()
	for range fast {
	}
	for s.Readers() != 0 {
		time.Sleep(time.Millisecond)
	}
}

func TestDropsAtEndOfBurstAreReported(t *testing.T) {
	s := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Subscribe(ctx, 1)
	for s.Readers() != 1 {
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		s.Publish(message.Message{Body: []byte{byte(i)}, System: map[string]string{}})
	}
	got, dropped := 0, 0
	deadline := time.After(3 * time.Second)
	for got+dropped < 10 {
		select {
		case e := <-ch:
			dropped += e.Dropped
			if e.Message.System != nil {
				got++
			}
		case <-deadline:
			t.Fatalf("after the burst: %d received, %d reported dropped", got, dropped)
		}
	}
	if got+dropped != 10 || dropped == 0 {
		t.Fatalf("%d received + %d dropped", got, dropped)
	}
}

// TestPublishBatchWaitsForSlowReader: a reader slower than a burst gets the
// whole burst when it catches up within the wait; one that does not is told
// how many it missed.
func TestPublishBatchWaitsForSlowReader(t *testing.T) {
	s := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Subscribe(ctx, 4)
	batch := make([]message.Message, 50)
	for i := range batch {
		batch[i] = message.Message{Body: []byte{byte(i)}}
	}
	got := make(chan int, 1)
	go func() {
		n := 0
		for e := range ch {
			if e.Dropped > 0 {
				t.Errorf("dropped %d within the wait", e.Dropped)
			}
			if e.Message.Body != nil {
				n++
			}
			if n == len(batch) {
				break
			}
			time.Sleep(time.Millisecond) // slower than the publisher
		}
		got <- n
	}()
	s.PublishBatch(ctx, batch, 5*time.Second)
	select {
	case n := <-got:
		if n != len(batch) {
			t.Fatalf("got %d of %d", n, len(batch))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reader never got the burst")
	}

	// A reader that does not read at all: the wait ends and it is told.
	stuck := s.Subscribe(ctx, 4)
	start := time.Now()
	s.PublishBatch(ctx, batch, 50*time.Millisecond)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("PublishBatch blocked %v on a stuck reader", d)
	}
	missed, seen := 0, 0
	deadline := time.After(3 * time.Second)
	for missed+seen < len(batch) {
		select {
		case e := <-stuck:
			missed += e.Dropped
			if e.Message.Body != nil {
				seen++
			}
		case <-deadline:
			t.Fatalf("seen %d, told of %d missed, want %d in all", seen, missed, len(batch))
		}
	}
	if missed == 0 {
		t.Fatal("a stuck reader was not told of missed messages")
	}
}
