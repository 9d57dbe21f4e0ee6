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
