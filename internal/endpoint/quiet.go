package endpoint

import (
	"context"
	"time"
)

// A worker whose endpoint has had nothing to deliver for QuietAfter reads
// the log at most every QuietPoll. Every worker reads every record, and
// the log wakes them all at each group commit (about a thousand a second
// under load): with routes that send all traffic to one endpoint, the
// others woke as often to find nothing, and their wake-ups queued for a core
// with the goroutines that devices' acknowledgements wait on. A message to a
// quiet endpoint waits at most QuietPoll longer; once one comes, the
// worker reads at every commit again.
const (
	QuietAfter = time.Second
	QuietPoll  = 20 * time.Millisecond
)

// quietness tracks when a worker last delivered and last read records.
type quietness struct {
	now      func() time.Time
	lastMine time.Time // the last read that held records for this endpoint
	lastRead time.Time // the last read that returned records
}

func newQuietness(now func() time.Time) *quietness {
	t := now()
	return &quietness{now: now, lastMine: t}
}

// read records a read of n records of which mine were for this endpoint.
func (q *quietness) read(n, mine int) {
	if n == 0 {
		return
	}
	t := q.now()
	q.lastRead = t
	if mine > 0 {
		q.lastMine = t
	}
}

// hold waits, when the endpoint is quiet, until QuietPoll has passed since
// the last read; the log has records by then, or soon.
func (q *quietness) hold(ctx context.Context) error {
	t := q.now()
	if t.Sub(q.lastMine) < QuietAfter {
		return nil
	}
	wait := q.lastRead.Add(QuietPoll).Sub(t)
	if wait <= 0 {
		return nil
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
