package hub

import "testing"

func TestRoutedRecordsMemo(t *testing.T) {
	c := newRoutedRecords()
	a, b := &routingState{}, &routingState{}
	calls := 0
	compute := func(eps ...string) func() routedEntry {
		return func() routedEntry { calls++; return routedEntry{endpoints: eps} }
	}
	steps := []struct {
		name      string
		off       uint64
		st        *routingState
		eps       []string
		wantCalls int
		want      string
	}{
		{"first ask computes", 7, a, []string{"x"}, 1, "x"},
		{"another endpoint's worker reuses", 7, a, []string{"other"}, 1, "x"},
		{"a routing change recomputes", 7, b, []string{"y"}, 2, "y"},
		{"the new routing's answer is kept", 7, b, []string{"other"}, 2, "y"},
		{"a later offset in the same slot recomputes", 7 + routedSlots, b, []string{"z"}, 3, "z"},
		{"and the earlier one is computed again", 7, b, []string{"w"}, 4, "w"},
	}
	for _, s := range steps {
		e := c.lookup(s.off, s.st, compute(s.eps...))
		if held, ok := c.ring.Get(s.off); calls != s.wantCalls || len(e.endpoints) != 1 || e.endpoints[0] != s.want || !ok || held != e || e.st != s.st {
			t.Fatalf("%s: computed %d times, entry %+v; want %d, [%s]", s.name, calls, e, s.wantCalls, s.want)
		}
	}
}
