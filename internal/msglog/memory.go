package msglog

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
)

// Memory is a Log held in memory, for tests of consumers. It is NOT durable:
// everything is gone when the process ends. It keeps the Log semantics
// otherwise (offsets, cursors, Trim, Wait, ErrClosed).
type Memory struct {
	mu      sync.Mutex
	recs    []Record // ascending offsets, contiguous
	last    uint64
	cursors map[string]uint64
	closed  bool
	notify  chan struct{}
}

// NewMemory returns an empty in-memory log.
func NewMemory() *Memory {
	return &Memory{cursors: map[string]uint64{}, notify: make(chan struct{})}
}

func (m *Memory) wakeLocked() {
	close(m.notify)
	m.notify = make(chan struct{})
}

// Append implements Log.
func (m *Memory) Append(ctx context.Context, data []byte) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	m.last++
	m.recs = append(m.recs, Record{Offset: m.last, Data: bytes.Clone(data)})
	m.wakeLocked()
	return m.last, nil
}

// AppendAsync implements AsyncAppender; done runs before it returns.
func (m *Memory) AppendAsync(data []byte, done func(offset uint64, err error)) {
	done(m.Append(context.Background(), data))
}

// Read implements Log.
func (m *Memory) Read(ctx context.Context, from uint64, max int) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	i := sort.Search(len(m.recs), func(i int) bool { return m.recs[i].Offset >= from })
	var out []Record
	for ; i < len(m.recs) && len(out) < max; i++ {
		out = append(out, Record{Offset: m.recs[i].Offset, Data: bytes.Clone(m.recs[i].Data)})
	}
	return out, nil
}

// Wait implements Log.
func (m *Memory) Wait(ctx context.Context, after uint64) error {
	for {
		m.mu.Lock()
		if m.last > after {
			m.mu.Unlock()
			return nil
		}
		if m.closed {
			m.mu.Unlock()
			return ErrClosed
		}
		ch := m.notify
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Last implements Log.
func (m *Memory) Last() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last
}

// Cursor implements Log.
func (m *Memory) Cursor(ctx context.Context, consumer string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	if c, ok := m.cursors[consumer]; ok {
		return c, nil
	}
	return 1, nil
}

// Sync implements Log; memory has nothing to sync.
func (m *Memory) Sync(ctx context.Context) error { return ctx.Err() }

// Commit implements Log.
func (m *Memory) Commit(ctx context.Context, consumer string, next uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if next == 0 {
		return fmt.Errorf("msglog: commit %q: offset 0 (offsets start at 1)", consumer)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.cursors[consumer] = next
	return nil
}

// Trim implements Log.
func (m *Memory) Trim(ctx context.Context, below uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	i := sort.Search(len(m.recs), func(i int) bool { return m.recs[i].Offset >= below })
	m.recs = append([]Record(nil), m.recs[i:]...)
	return nil
}

// Close implements Log.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	m.wakeLocked()
	return nil
}

var (
	_ Log           = (*Memory)(nil)
	_ AsyncAppender = (*Memory)(nil)
)
