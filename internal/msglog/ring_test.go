package msglog

import (
	"sync"
	"testing"
)

func TestRing(t *testing.T) {
	r := NewRing[string](4)
	steps := []struct {
		name   string
		do     func()
		off    uint64
		want   string
		wantOK bool
	}{
		{"empty", func() {}, 1, "", false},
		{"put then get", func() { r.Put(1, "a") }, 1, "a", true},
		{"another slot leaves it", func() { r.Put(2, "b") }, 1, "a", true},
		{"a later offset takes the slot", func() { r.Put(5, "e") }, 1, "", false},
		{"and holds it", func() {}, 5, "e", true},
		{"an offset never put misses", func() {}, 9, "", false},
		{"drop empties the slot", func() { r.Drop(5) }, 5, "", false},
		{"drop of one offset empties any in its slot", func() { r.Put(6, "f"); r.Drop(2) }, 6, "", false},
	}
	for _, s := range steps {
		s.do()
		if got, ok := r.Get(s.off); got != s.want || ok != s.wantOK {
			t.Fatalf("%s: Get(%d) = %q, %v; want %q, %v", s.name, s.off, got, ok, s.want, s.wantOK)
		}
	}
}

// Readers never see a value under another offset, however puts interleave
// (run with -race).
func TestRingConcurrent(t *testing.T) {
	r := NewRing[uint64](8)
	var wg sync.WaitGroup
	wg.Go(func() {
		for off := range uint64(20000) {
			r.Put(off, off*3)
		}
	})
	for range 2 {
		wg.Go(func() {
			for off := range uint64(20000) {
				if v, ok := r.Get(off); ok && v != off*3 {
					t.Errorf("Get(%d) = %d", off, v)
					return
				}
			}
		})
	}
	wg.Wait()
}
