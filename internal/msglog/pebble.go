package msglog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Key layout. Records sort by offset because offsets are big-endian; the
// prefixes keep records, cursors and metadata in separate key ranges so a
// record scan never meets a cursor.
var (
	recordPrefix = []byte("r")
	cursorPrefix = []byte("c")
	// trimKey holds the lowest offset Trim kept (big-endian), so that a log
	// trimmed to empty still knows its last offset after a restart and never
	// hands out an offset twice.
	trimKey = []byte("mtrim")
)

func recordKey(off uint64) []byte {
	k := make([]byte, 9)
	k[0] = recordPrefix[0]
	binary.BigEndian.PutUint64(k[1:], off)
	return k
}

func cursorKey(consumer string) []byte {
	return append(append([]byte{}, cursorPrefix...), consumer...)
}

// recordUpper is the exclusive upper bound of the record range.
var recordUpper = []byte{recordPrefix[0] + 1}

// PebbleOptions tunes the embedded log. The zero value suits a small (2-core)
// hub.
type PebbleOptions struct {
	// MemTableSize is the size of one memtable (default 32 MiB). At 20,000
	// messages/s of 256-byte bodies a memtable fills in about three seconds.
	// Records that endpoints have delivered are trimmed (range-deleted) every
	// fraction of a second, so when a memtable flushes almost all of it is
	// covered by tombstones and the flush drops it: delivered records are
	// never written to an sstable or compacted. With 16 MiB a flush came
	// every 1.4 s, carried records not yet trimmed, and the compactions that
	// rewrote them took a core for over half a second (p99 latency 190 ms).
	// Two memtables may exist at once (one flushing).
	MemTableSize uint64
	// CacheSize is the block cache (default 16 MiB). Consumers read recent
	// records, which are mostly still in the memtables, so the cache matters
	// little; pebble's default (8 MiB) is close.
	CacheSize int64
	// MaxBatch bounds how many appends one group commit writes (default
	// 4096), so one commit cannot grow without limit under a burst.
	MaxBatch int
	// CommitInterval is the least time between the starts of two group
	// commits while appends come from several writers at once (default
	// 1 ms; negative: none). Committing as soon as the previous fsync
	// returns made, at 10,000 messages/s from 100 devices, some 5,000
	// commits of two records each: an fsync, a WAL write and a wake-up of
	// every consumer per commit took half of the hub's CPU. Waiting a
	// little gathers the commit: hub CPU per message -15 % at 30,000/s and
	// -50 % at 10,000/s, for at most a millisecond more until PUBACK. A
	// lone writer that waits for each append (one commit per record) gains
	// nothing from waiting, so a commit of a single record is never
	// followed by a wait.
	CommitInterval time.Duration
	// OnCommit, if set, is told of every group commit that wrote records:
	// wait is from the first append of the group to its durability (the
	// longest any of its appends waited; for appends held over from a
	// group larger than MaxBatch, from when that group was taken), sync is
	// the batch's write and fsync. It runs on the committer and must be
	// quick.
	OnCommit func(records int, wait, sync time.Duration)
	// Logger receives pebble's own messages (default: discarded below warn,
	// through slog.Default()).
	Logger *slog.Logger
}

// PebbleLog is the single-node Log: a pebble database in one directory.
//
// Appends are group-committed by one committer goroutine, owned by the log
// and stopped by Close: every Append queued while the previous commit was
// syncing goes into the next pebble.Batch, which is applied with pebble.Sync
// — one WAL fsync for the whole group. The committer assigns offsets as it
// builds the batch, so offsets follow commit order and have no gaps.
type PebbleLog struct {
	db       *pebble.DB
	maxBatch int
	interval time.Duration

	// last is the highest durable offset; notify is closed (and replaced)
	// whenever last grows or the log closes, waking Wait.
	last atomic.Uint64
	// tail holds the latest small records as appended, so that consumers
	// keeping up with the log read them without a pebble iterator or a copy
	// (see tailRing).
	tail tailRing
	// floor is the lowest offset kept (the last trim's bound); tmu orders
	// trims so that it only rises.
	floor atomic.Uint64
	tmu   sync.Mutex
	// spilled counts records that were still undelivered when their memtable
	// was flushed, so that they sit in sstables; spillTop is the last offset
	// at the latest such flush. See reclaim.
	spilled  atomic.Uint64
	spillTop atomic.Uint64
	nmu      sync.Mutex
	notify   chan struct{}

	onCommit func(int, time.Duration, time.Duration)

	// qmu guards the append queue and closed; kick wakes the committer.
	qmu   sync.Mutex
	queue []*appendReq
	// queuedAt is when the first request of the queue arrived.
	queuedAt time.Time
	closed   bool
	kick     chan struct{}
	stopped  chan struct{}
	// broken is a commit error after which the log refuses appends: a failed
	// sync leaves it unknown whether the batch is on disk, and reusing its
	// offsets could then overwrite acknowledged records.
	broken error

	// commits and appended count synced batches and the records in them:
	// their ratio is the group-commit factor.
	commits, appended atomic.Uint64

	// rw keeps reads and writes away from a closing database: operations hold
	// it shared, Close exclusively.
	rw sync.RWMutex
	// dbClosed is set under rw held exclusively.
	dbClosed bool
}

type appendReq struct {
	ctx  context.Context
	data []byte
	off  uint64
	err  error
	done chan struct{}
	// cb, when set, answers the request instead of done (AppendAsync).
	cb func(uint64, error)
}

var reqPool = sync.Pool{New: func() any { return &appendReq{done: make(chan struct{}, 1)} }}

// OpenPebble opens (creating if needed) the log in dir and recovers its last
// offset.
func OpenPebble(dir string, opts PebbleOptions) (*PebbleLog, error) {
	if opts.MemTableSize == 0 {
		opts.MemTableSize = 32 << 20
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 16 << 20
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 4096
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	switch {
	case opts.CommitInterval == 0:
		opts.CommitInterval = time.Millisecond
	case opts.CommitInterval < 0:
		opts.CommitInterval = 0
	}
	po := &pebble.Options{
		FormatMajorVersion: pebble.FormatNewest,
		MemTableSize:       opts.MemTableSize,
		// Two memtables: one taking writes while the other flushes; writes
		// stall only if a flush cannot keep up with a whole memtable.
		MemTableStopWritesThreshold: 2,
		CacheSize:                   opts.CacheSize,
		// A handful of sstables is all a log trimmed behind its consumers
		// keeps open.
		MaxOpenFiles: 256,
		// One compaction at a time: the box has two cores and they belong
		// to the devices.
		CompactionConcurrencyRange: func() (int, int) { return 1, 1 },
		// Pebble's default wants 16 GB free before it slows deletions down;
		// on a small disk that would throttle every trim.
		FreeSpaceThresholdBytes: 1 << 30,
		Logger:                  pebbleLogger{opts.Logger},
	}
	// Flushes may begin inside Open, before the log exists.
	var self atomic.Pointer[PebbleLog]
	po.EventListener = &pebble.EventListener{FlushBegin: func(pebble.FlushInfo) {
		if l := self.Load(); l != nil {
			l.noteFlush()
		}
	}}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("msglog: open %s: %w", dir, err)
	}
	l := &PebbleLog{
		db:       db,
		maxBatch: opts.MaxBatch,
		interval: opts.CommitInterval,
		onCommit: opts.OnCommit,
		notify:   make(chan struct{}),
		kick:     make(chan struct{}, 1),
		stopped:  make(chan struct{}),
		tail:     newTailRing(),
	}
	last, floor, err := recoverLast(db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("msglog: open %s: %w", dir, err)
	}
	l.last.Store(last)
	l.floor.Store(floor)
	self.Store(l)
	go l.commitLoop()
	return l, nil
}

// recoverLast finds the highest offset ever written: the last record's, or,
// when trimming removed every record, the one below the trim floor. It also
// returns the floor.
func recoverLast(db *pebble.DB) (last, floor uint64, err error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: recordPrefix, UpperBound: recordUpper})
	if err != nil {
		return 0, 0, err
	}
	if it.Last() {
		k := it.Key()
		if len(k) != 9 {
			it.Close()
			return 0, 0, fmt.Errorf("malformed record key %x", k)
		}
		last = binary.BigEndian.Uint64(k[1:])
	}
	if err := it.Close(); err != nil {
		return 0, 0, err
	}
	v, closer, err := db.Get(trimKey)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return 0, 0, err
	default:
		if len(v) != 8 {
			closer.Close()
			return 0, 0, fmt.Errorf("malformed trim floor %x", v)
		}
		floor = binary.BigEndian.Uint64(v)
		if floor > 0 && floor-1 > last {
			last = floor - 1
		}
		closer.Close()
	}
	return last, floor, nil
}

// Append implements Log. If ctx ends before the record is durable, Append
// returns ctx's error and the record may or may not be in the log (at least
// once: the device resends).
func (l *PebbleLog) Append(ctx context.Context, data []byte) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	r := reqPool.Get().(*appendReq)
	r.ctx, r.data, r.off, r.err = ctx, data, 0, nil
	l.qmu.Lock()
	if l.closed {
		l.qmu.Unlock()
		reqPool.Put(r)
		return 0, ErrClosed
	}
	if l.broken != nil {
		err := l.broken
		l.qmu.Unlock()
		reqPool.Put(r)
		return 0, err
	}
	l.enqueue(r)
	l.qmu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	select {
	case <-r.done:
		off, err := r.off, r.err
		r.ctx, r.data = nil, nil
		reqPool.Put(r)
		return off, err
	case <-ctx.Done():
		// The committer still owns r and will signal done into its buffer;
		// r is simply not returned to the pool.
		return 0, ctx.Err()
	}
}

// AppendAsync implements AsyncAppender: data joins the next group commit and
// done runs on the committer goroutine once it is durable (or failed), so
// done must be quick and must not block — hand the result to another
// goroutine. data must not change until then. Appends issued from one
// goroutine are committed, and answered, in the order issued.
func (l *PebbleLog) AppendAsync(data []byte, done func(offset uint64, err error)) {
	l.qmu.Lock()
	var err error
	switch {
	case l.closed:
		err = ErrClosed
	case l.broken != nil:
		err = l.broken
	default:
		l.enqueue(&appendReq{ctx: context.Background(), data: data, cb: done})
	}
	l.qmu.Unlock()
	if err != nil {
		done(0, err)
		return
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// enqueue adds r to the next group commit (qmu held).
func (l *PebbleLog) enqueue(r *appendReq) {
	if len(l.queue) == 0 && l.onCommit != nil {
		l.queuedAt = time.Now()
	}
	l.queue = append(l.queue, r)
}

// commitLoop is the committer: it takes everything queued, writes it as one
// synced batch, and answers the callers; after a commit of several records it
// lets CommitInterval pass before the next one starts.
func (l *PebbleLog) commitLoop() {
	defer close(l.stopped)
	var spare []*appendReq
	var lastStart time.Time
	lastN := 0
	for {
		l.qmu.Lock()
		for len(l.queue) == 0 {
			if l.closed {
				l.qmu.Unlock()
				return
			}
			l.qmu.Unlock()
			<-l.kick
			l.qmu.Lock()
		}
		if wait := l.interval - time.Since(lastStart); lastN > 1 && wait > 0 {
			l.qmu.Unlock()
			time.Sleep(wait)
			l.qmu.Lock()
		}
		lastStart = time.Now()
		queuedAt := l.queuedAt
		batch := l.queue
		if len(batch) > l.maxBatch {
			// The rest stays queued for the next round, in order; its wait
			// is counted from here.
			l.queue = append(spare[:0], batch[l.maxBatch:]...)
			batch = batch[:l.maxBatch]
			l.queuedAt = lastStart
		} else {
			l.queue = spare[:0]
		}
		l.qmu.Unlock()
		lastN = len(batch)
		l.commit(batch, queuedAt)
		clear(batch)
		spare = batch[:0]
	}
}

func (l *PebbleLog) commit(reqs []*appendReq, queuedAt time.Time) {
	var err error
	l.qmu.Lock()
	err = l.broken
	l.qmu.Unlock()
	next := l.last.Load() + 1
	b := l.db.NewBatch()
	defer b.Close()
	var key [9]byte
	key[0] = recordPrefix[0]
	n := 0
	for _, r := range reqs {
		if err == nil && r.ctx.Err() == nil {
			binary.BigEndian.PutUint64(key[1:], next+uint64(n))
			_ = b.Set(key[:], r.data, nil) // Batch.Set copies; it fails only on a closed batch
			r.off = next + uint64(n)
			n++
		}
	}
	if n > 0 && err == nil {
		var applyStart time.Time
		if l.onCommit != nil {
			applyStart = time.Now()
		}
		if err = l.db.Apply(b, pebble.Sync); err != nil {
			err = fmt.Errorf("msglog: commit: %w", err)
			l.qmu.Lock()
			l.broken = err
			l.qmu.Unlock()
		} else {
			for _, r := range reqs {
				if r.off != 0 {
					l.tail.put(r.off, r.data)
				}
			}
			l.last.Store(next + uint64(n) - 1)
			l.commits.Add(1)
			l.appended.Add(uint64(n))
			l.wake()
			if l.onCommit != nil {
				now := time.Now()
				l.onCommit(n, now.Sub(queuedAt), now.Sub(applyStart))
			}
		}
	}
	for _, r := range reqs {
		switch {
		case err != nil:
			r.off, r.err = 0, err
		case r.off == 0:
			r.err = r.ctx.Err()
		}
		if r.cb != nil {
			r.cb(r.off, r.err)
			continue
		}
		r.done <- struct{}{}
	}
}

func (l *PebbleLog) wake() {
	l.nmu.Lock()
	close(l.notify)
	l.notify = make(chan struct{})
	l.nmu.Unlock()
}

// Read implements Log.
func (l *PebbleLog) Read(ctx context.Context, from uint64, max int) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	if from == 0 {
		from = 1
	}
	l.rw.RLock()
	defer l.rw.RUnlock()
	if l.dbClosed {
		return nil, ErrClosed
	}
	// Bound the scan by the durable offset too: a batch being applied is
	// visible to pebble readers a moment before Append returns, but a
	// consumer must not see a record before it is acknowledged durable.
	last := l.last.Load()
	if from > last {
		return nil, nil
	}
	if from >= l.floor.Load() {
		if recs := l.tail.read(from, last, max); len(recs) > 0 {
			return recs, nil
		}
	}
	it, err := l.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: recordKey(from), UpperBound: recordKey(last + 1)})
	if err != nil {
		return nil, fmt.Errorf("msglog: read: %w", err)
	}
	var recs []Record
	for ok := it.First(); ok && len(recs) < max; ok = it.Next() {
		k := it.Key()
		if len(k) != 9 {
			it.Close()
			return nil, fmt.Errorf("msglog: read: malformed record key %x", k)
		}
		recs = append(recs, Record{Offset: binary.BigEndian.Uint64(k[1:]), Data: bytes.Clone(it.Value())})
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("msglog: read: %w", err)
	}
	return recs, nil
}

// Wait implements Log.
func (l *PebbleLog) Wait(ctx context.Context, after uint64) error {
	for {
		l.nmu.Lock()
		ch := l.notify
		l.nmu.Unlock()
		if l.last.Load() > after {
			return nil
		}
		l.qmu.Lock()
		closed := l.closed
		l.qmu.Unlock()
		if closed {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Last implements Log.
func (l *PebbleLog) Last() uint64 { return l.last.Load() }

// Cursor implements Log.
func (l *PebbleLog) Cursor(ctx context.Context, consumer string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l.rw.RLock()
	defer l.rw.RUnlock()
	if l.dbClosed {
		return 0, ErrClosed
	}
	v, closer, err := l.db.Get(cursorKey(consumer))
	if errors.Is(err, pebble.ErrNotFound) {
		return 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("msglog: cursor %q: %w", consumer, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("msglog: cursor %q: malformed value", consumer)
	}
	return binary.BigEndian.Uint64(v), nil
}

// Commit implements Log. The write is synced; concurrent commits share
// fsyncs through pebble's commit pipeline.
func (l *PebbleLog) Commit(ctx context.Context, consumer string, next uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if next == 0 {
		return fmt.Errorf("msglog: commit %q: offset 0 (offsets start at 1)", consumer)
	}
	l.rw.RLock()
	defer l.rw.RUnlock()
	if l.dbClosed {
		return ErrClosed
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], next)
	if err := l.db.Set(cursorKey(consumer), v[:], pebble.NoSync); err != nil {
		return fmt.Errorf("msglog: commit %q: %w", consumer, err)
	}
	return nil
}

// Sync implements Log: a synced empty WAL record makes every write before it
// durable, the WAL being sequential.
func (l *PebbleLog) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.rw.RLock()
	defer l.rw.RUnlock()
	if l.dbClosed {
		return ErrClosed
	}
	if err := l.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("msglog: sync: %w", err)
	}
	return nil
}

// Trim implements Log. It deletes with one range tombstone and records the
// trim floor in the same synced batch; pebble reclaims the space in later
// compactions. Trimming above the last offset trims only what exists.
func (l *PebbleLog) Trim(ctx context.Context, below uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.rw.RLock()
	defer l.rw.RUnlock()
	if l.dbClosed {
		return ErrClosed
	}
	if last := l.last.Load(); below > last+1 {
		below = last + 1
	}
	if below <= 1 {
		return nil
	}
	l.tmu.Lock()
	defer l.tmu.Unlock()
	if below <= l.floor.Load() {
		return nil // nothing new: no write, no fsync
	}
	b := l.db.NewBatch()
	defer b.Close()
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], below)
	// Below the floor everything is deleted already: tombstones that do not
	// overlap stay cheap to fragment when trims come every fraction of a second.
	if err := b.DeleteRange(recordKey(l.floor.Load()), recordKey(below), nil); err != nil {
		return fmt.Errorf("msglog: trim: %w", err)
	}
	if err := b.Set(trimKey, v[:], nil); err != nil {
		return fmt.Errorf("msglog: trim: %w", err)
	}
	if err := l.db.Apply(b, pebble.Sync); err != nil {
		return fmt.Errorf("msglog: trim: %w", err)
	}
	l.floor.Store(below)
	l.reclaim(below)
	return nil
}

// noteFlush runs as pebble begins a flush: the records between the trim
// floor and the last offset are live and go to sstables.
func (l *PebbleLog) noteFlush() {
	last, floor := l.last.Load(), l.floor.Load()
	if last >= floor {
		l.spilled.Add(last - floor + 1)
		l.spillTop.Store(last)
	}
}

// spillReclaim is how many spilled records make a trim past them flush at
// once (about 10 MB of telemetry).
const spillReclaim = 16 << 10

// reclaim flushes the memtable when a trim has just passed a large backlog
// that reached sstables (an endpoint that was down or slow), instead of
// waiting until the memtable fills: the flush carries the trim's tombstone
// to those sstables, and the compaction that drops them runs now, in the
// quiet after the backlog, rather than during the next burst. tmu is held.
func (l *PebbleLog) reclaim(below uint64) {
	if below <= l.spillTop.Load() {
		return // still behind what was spilled
	}
	// Past it: the count starts again either way. In steady flow every
	// flush spills the records of the last moments, too few to matter.
	if l.spilled.Swap(0) >= spillReclaim {
		_, _ = l.db.AsyncFlush() // best effort: pebble flushes later anyway
	}
}

// Close stops the committer — appends already queued are committed first —
// wakes every Wait with ErrClosed and closes the database. Later calls return
// ErrClosed.
func (l *PebbleLog) Close() error {
	l.qmu.Lock()
	if l.closed {
		l.qmu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.qmu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	<-l.stopped
	l.wake()
	l.rw.Lock()
	defer l.rw.Unlock()
	l.dbClosed = true
	if err := l.db.Close(); err != nil {
		return fmt.Errorf("msglog: close: %w", err)
	}
	return nil
}

// PebbleStats counts the log's group commits.
type PebbleStats struct {
	Commits uint64 // synced batches of appends (one WAL fsync each)
	Appends uint64 // records in them
}

// Stats reports group-commit counters since Open.
func (l *PebbleLog) Stats() PebbleStats {
	return PebbleStats{Commits: l.commits.Load(), Appends: l.appended.Load()}
}

// DiskUsage reports the bytes the database occupies on disk, for metrics.
func (l *PebbleLog) DiskUsage() uint64 {
	l.rw.RLock()
	defer l.rw.RUnlock()
	if l.dbClosed {
		return 0
	}
	return l.db.Metrics().DiskSpaceUsage()
}

// tailRing keeps the latest records of up to tailMaxBytes as appended.
// Endpoint workers read right behind the committer: at a small batch size each
// worker's pebble iterator and copy of every record were a fifth of the hub's
// allocations. Only the committer puts, before it publishes the new last
// offset; a record the ring no longer holds sends readers to pebble.
type tailRing struct{ ring *Ring[[]byte] }

// tailSlots and tailMaxBytes bound what the ring keeps alive (16 MiB at
// worst; a few MiB for typical telemetry).
const (
	tailSlots    = 4096
	tailMaxBytes = 4 << 10
)

func newTailRing() tailRing { return tailRing{NewRing[[]byte](tailSlots)} }

func (t tailRing) put(off uint64, data []byte) {
	if len(data) > tailMaxBytes {
		t.ring.Drop(off)
		return
	}
	t.ring.Put(off, data)
}

// read returns the records from..last (at most max) that are still in the
// ring, stopping at the first that is not; nil if from is not.
func (t tailRing) read(from, last uint64, max int) []Record {
	var recs []Record
	for off := from; off <= last && len(recs) < max; off++ {
		data, ok := t.ring.Get(off)
		if !ok {
			break
		}
		if recs == nil {
			recs = make([]Record, 0, min(uint64(max), last-from+1))
		}
		recs = append(recs, Record{Offset: off, Data: data})
	}
	return recs
}

// pebbleLogger routes pebble's messages to slog. Pebble reports routine
// events (WAL recycling, flushes) at Infof; they go to debug.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf("pebble: "+format, args...))
}

var (
	_ Log           = (*PebbleLog)(nil)
	_ AsyncAppender = (*PebbleLog)(nil)
)
