package msglog

import "sync/atomic"

// Ring keeps one value per log offset for the most recent offsets: slot
// offset modulo the ring's size, so a later offset takes the slot of an
// earlier one. Readers that follow the log closely (endpoint workers) find
// what one of them, or the committer, put there; a reader further behind
// misses and does the work itself. It is safe for concurrent use without
// locks; the values put in it are shared and must not be changed.
type Ring[T any] struct {
	slots []atomic.Pointer[ringEntry[T]]
}

type ringEntry[T any] struct {
	off uint64
	v   T
}

// NewRing returns a ring of size slots.
func NewRing[T any](size int) *Ring[T] {
	return &Ring[T]{slots: make([]atomic.Pointer[ringEntry[T]], size)}
}

// Get returns the value put for off, if its slot still holds it.
func (r *Ring[T]) Get(off uint64) (T, bool) {
	if e := r.slot(off).Load(); e != nil && e.off == off {
		return e.v, true
	}
	var zero T
	return zero, false
}

// Put sets the value for off, replacing whatever its slot held.
func (r *Ring[T]) Put(off uint64, v T) { r.slot(off).Store(&ringEntry[T]{off: off, v: v}) }

// Drop empties off's slot, releasing the value it held.
func (r *Ring[T]) Drop(off uint64) { r.slot(off).Store(nil) }

func (r *Ring[T]) slot(off uint64) *atomic.Pointer[ringEntry[T]] {
	return &r.slots[off%uint64(len(r.slots))]
}
