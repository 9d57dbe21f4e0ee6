package endpoint

import (
	"context"
	"fmt"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
)

// SysReplayTo marks a dead letter put back into the durable log for one
// endpoint: that endpoint's worker delivers it (without the mark) and every
// other endpoint, and routing, ignore it. It is outside IoT Hub's names.
const SysReplayTo = "moat-replay-endpoint"

// DeadLetter is one dead-lettered message with its position in the
// endpoint's dead-letter log.
type DeadLetter struct {
	Offset  uint64          `json:"offset"`
	Message message.Message `json:"message"`
}

// ListDeadLetters returns up to top dead letters (all when top <= 0), oldest
// first.
func ListDeadLetters(ctx context.Context, dead msglog.Log, top int) ([]DeadLetter, error) {
	var out []DeadLetter
	next := uint64(1)
	for top <= 0 || len(out) < top {
		n := 256
		if top > 0 {
			n = min(n, top-len(out))
		}
		recs, err := dead.Read(ctx, next, n)
		if err != nil {
			return nil, fmt.Errorf("read dead letters: %w", err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			m, err := msglog.DecodeMessage(r.Data)
			if err != nil {
				return nil, fmt.Errorf("dead letter %d: %w", r.Offset, err)
			}
			out = append(out, DeadLetter{Offset: r.Offset, Message: m})
		}
		next = recs[len(recs)-1].Offset + 1
	}
	return out, nil
}

// ReplayDeadLetters appends every dead letter of endpoint name back into the
// durable log, marked for that endpoint alone, and then trims them from the
// dead-letter log. Each append is durable before the trim, so a crash in
// between delivers some twice but loses none. It returns how many it put
// back.
func ReplayDeadLetters(ctx context.Context, name string, dead, log msglog.Log) (int, error) {
	n := 0
	next := uint64(1)
	for {
		recs, err := dead.Read(ctx, next, 256)
		if err != nil {
			return n, fmt.Errorf("read dead letters: %w", err)
		}
		if len(recs) == 0 {
			return n, nil
		}
		for _, r := range recs {
			m, err := msglog.DecodeMessage(r.Data)
			if err != nil {
				return n, fmt.Errorf("dead letter %d: %w", r.Offset, err)
			}
			sys := make(map[string]string, len(m.System)+1)
			for k, v := range m.System {
				sys[k] = v
			}
			sys[SysReplayTo] = name
			m.System = sys
			rec, err := msglog.EncodeMessage(m)
			if err != nil {
				return n, fmt.Errorf("encode replay: %w", err)
			}
			if _, err := log.Append(ctx, rec); err != nil {
				return n, fmt.Errorf("replay into the log: %w", err)
			}
			n++
		}
		next = recs[len(recs)-1].Offset + 1
		if err := dead.Trim(ctx, next); err != nil {
			return n, fmt.Errorf("trim replayed dead letters: %w", err)
		}
	}
}

// ReplayTarget says whether m is a replayed dead letter, and for which
// endpoint.
func ReplayTarget(m message.Message) (string, bool) {
	to, ok := m.System[SysReplayTo]
	return to, ok
}

// WithoutReplayMark returns m without the replay mark, for delivery.
func WithoutReplayMark(m message.Message) message.Message {
	sys := make(map[string]string, len(m.System))
	for k, v := range m.System {
		if k != SysReplayTo {
			sys[k] = v
		}
	}
	m.System = sys
	return m
}
