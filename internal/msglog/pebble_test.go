package msglog_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/msglog"
	"github.com/moat-iot/moat/internal/msglog/msglogtest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openPebble(t testing.TB, dir string) *msglog.PebbleLog {
	t.Helper()
	l, err := msglog.OpenPebble(dir, msglog.PebbleOptions{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestPebbleConformance(t *testing.T) {
	msglogtest.Run(t, func(t *testing.T) msglog.Log { return openPebble(t, t.TempDir()) })
	base := t.TempDir()
	msglogtest.RunDurable(t, func(t *testing.T, name string) msglog.Log { return openPebble(t, filepath.Join(base, name)) })
}

func TestMemoryConformance(t *testing.T) {
	msglogtest.Run(t, func(t *testing.T) msglog.Log { return msglog.NewMemory() })
}

// A consumer must never read a record its appender has not been told is
// durable: Read stops at Last even while a commit is being applied.
func TestPebbleReadStopsAtLast(t *testing.T) {
	l := openPebble(t, t.TempDir())
	defer l.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := l.Append(ctx, []byte("x")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 200 {
		last := l.Last()
		recs, err := l.Read(ctx, last+1, 1000)
		if err != nil {
			t.Fatal(err)
		}
		// Last may have grown in between; what Read returned must be no
		// further than Last is now.
		if n := len(recs); n > 0 && recs[n-1].Offset > l.Last() {
			t.Fatalf("read offset %d beyond Last %d", recs[n-1].Offset, l.Last())
		}
	}
	close(stop)
	wg.Wait()
}

// Trims delete from the previous floor up, so the floor must survive a
// restart: a trim after reopening still leaves nothing below it.
func TestPebbleTrimInStepsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l := openPebble(t, dir)
	for i := range 10 {
		if _, err := l.Append(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, below := range []uint64{4, 7, 7, 6} {
		if err := l.Trim(ctx, below); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openPebble(t, dir)
	defer l.Close()
	if err := l.Trim(ctx, 9); err != nil {
		t.Fatal(err)
	}
	recs, err := l.Read(ctx, 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, r := range recs {
		got = append(got, r.Offset)
	}
	if fmt.Sprint(got) != "[9 10]" {
		t.Fatalf("offsets after trims to 4, 7 and (after a restart) 9: %v, want [9 10]", got)
	}
}

// Reads served from the in-memory tail must give what pebble gives: the
// same records after a restart (empty tail), for every start and size,
// across ring wrap-around, records too large for the ring, and a trim.
func TestPebbleTailReadsMatchDisk(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l := openPebble(t, dir)
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 9000 // more than twice the ring
	var wg sync.WaitGroup
	for i := range n {
		size := 1 + rng.IntN(300)
		if i%97 == 0 {
			size = 5000 + rng.IntN(3000) // too large for the ring
		}
		data := bytes.Repeat([]byte{byte(i)}, size)
		binary := []byte(strconv.Itoa(i) + ":")
		wg.Add(1)
		l.AppendAsync(append(binary, data...), func(_ uint64, err error) {
			defer wg.Done()
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := l.Trim(ctx, 20); err != nil {
		t.Fatal(err)
	}
	type span struct {
		from uint64
		max  int
	}
	spans := []span{{1, 5}, {19, 3}, {20, 1}, {4000, 500}, {n - 4200, 500}, {n - 4096, 4096}, {n - 3, 10}, {n, 1}, {n + 1, 5}}
	for range 200 {
		spans = append(spans, span{uint64(1 + rng.IntN(n+2)), 1 + rng.IntN(600)})
	}
	read := func(l *msglog.PebbleLog) [][]msglog.Record {
		var out [][]msglog.Record
		for _, sp := range spans {
			recs, err := l.Read(ctx, sp.from, sp.max)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, recs)
		}
		return out
	}
	fromTail := read(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openPebble(t, dir)
	defer l.Close()
	fromDisk := read(l)
	for i, sp := range spans {
		a, b := fromTail[i], fromDisk[i]
		// A tail read may stop early where the ring lost a record; what it
		// returns must be a prefix of what pebble returns, never empty when
		// pebble has something.
		if len(a) == 0 && len(b) > 0 || len(a) > len(b) {
			t.Fatalf("Read(%d, %d): %d records live, %d after restart", sp.from, sp.max, len(a), len(b))
		}
		for j := range a {
			if a[j].Offset != b[j].Offset || !bytes.Equal(a[j].Data, b[j].Data) {
				t.Fatalf("Read(%d, %d) record %d: offset %d (%d bytes) live, %d (%d bytes) after restart", sp.from, sp.max, j, a[j].Offset, len(a[j].Data), b[j].Offset, len(b[j].Data))
			}
		}
	}
}

// ---- kill -9 ----

const killHelperEnv = "MSGLOG_KILL_HELPER_DIR"

// TestKillHelper is the child process of TestKill9: it appends from many
// goroutines and prints "ack <offset> <payload>" for each acknowledged append.
func TestKillHelper(t *testing.T) {
	dir := os.Getenv(killHelperEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9")
	}
	l, err := msglog.OpenPebble(dir, msglog.PebbleOptions{Logger: quiet()})
	if err != nil {
		fmt.Println("open error:", err)
		os.Exit(2)
	}
	fmt.Printf("ready %d\n", l.Last())
	var out sync.Mutex
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				p := killPayload(os.Getpid(), w, i)
				off, err := l.Append(context.Background(), p)
				if err != nil {
					fmt.Println("append error:", err)
					os.Exit(2)
				}
				out.Lock()
				// One write per line, straight to the pipe: once it is out,
				// the parent counts the record as acknowledged.
				fmt.Fprintf(os.Stdout, "ack %d %s\n", off, p)
				out.Unlock()
			}
		}()
	}
	wg.Wait()
}

// killPayload is a self-checking record of about 256 bytes.
func killPayload(pid, w, i int) []byte {
	body := fmt.Sprintf("p%d-w%d-i%d-", pid, w, i)
	body += strings.Repeat("x", 200-len(body))
	sum := sha256.Sum256([]byte(body))
	return []byte(body + "-" + hex.EncodeToString(sum[:])[:32])
}

// TestKill9 kills an appending process with SIGKILL at random points and
// checks, after each kill, that every acknowledged record is in the log,
// intact, and that the log has no gaps.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	acked := map[uint64]string{}
	for round := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), killHelperEnv+"="+dir)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 2000 + rand.IntN(8000)
		sc := bufio.NewScanner(stdout)
		n := 0
		var killed atomic.Bool
		timer := time.AfterFunc(30*time.Second, func() { killed.Store(true); cmd.Process.Kill() })
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "ready ") {
				continue
			}
			f := strings.SplitN(line, " ", 3)
			if len(f) != 3 || f[0] != "ack" {
				t.Fatalf("round %d: helper said %q", round, line)
			}
			off, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("round %d: %q", round, line)
			}
			if _, dup := acked[off]; dup {
				t.Fatalf("round %d: offset %d acknowledged twice", round, off)
			}
			acked[off] = f[2]
			if n++; n == killAfter {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
			}
		}
		timer.Stop()
		_ = cmd.Wait()
		if killed.Load() {
			t.Fatalf("round %d: helper hung", round)
		}
		if n < killAfter {
			t.Fatalf("round %d: helper exited after %d acks, before it was killed", round, n)
		}

		l := openPebble(t, dir)
		recs, err := l.Read(context.Background(), 1, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(recs)) != l.Last() {
			t.Fatalf("round %d: %d records but Last is %d", round, len(recs), l.Last())
		}
		have := make(map[uint64][]byte, len(recs))
		for i, r := range recs {
			if r.Offset != uint64(i+1) {
				t.Fatalf("round %d: gap before offset %d", round, r.Offset)
			}
			if !validPayload(r.Data) {
				t.Fatalf("round %d: offset %d corrupt: %q", round, r.Offset, r.Data)
			}
			have[r.Offset] = r.Data
		}
		for off, p := range acked {
			if got, ok := have[off]; !ok || !bytes.Equal(got, []byte(p)) {
				t.Fatalf("round %d: acknowledged offset %d lost or changed (have %q)", round, off, got)
			}
		}
		t.Logf("round %d: killed after %d acks; log holds %d records, %d acknowledged in all, %d unacknowledged survivors",
			round, n, len(recs), len(acked), len(recs)-len(acked))
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func validPayload(p []byte) bool {
	i := bytes.LastIndexByte(p, '-')
	if i < 0 || len(p)-i-1 != 32 {
		return false
	}
	s := sha256.Sum256(p[:i])
	return hex.EncodeToString(s[:])[:32] == string(p[i+1:])
}

// ---- benchmarks ----

// BenchmarkAppendParallel measures durable appends of 256-byte records from
// about 64 concurrent writers (GOMAXPROCS × 32).
func BenchmarkAppendParallel(b *testing.B) {
	for _, writers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			l := openPebble(b, b.TempDir())
			defer l.Close()
			data := bytes.Repeat([]byte("a"), 256)
			p := writers / max(1, runtime.GOMAXPROCS(0))
			b.SetParallelism(max(1, p))
			b.SetBytes(int64(len(data)))
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := l.Append(context.Background(), data); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkRead measures reading 256-byte records in pages of 256, as a
// consumer does.
func BenchmarkRead(b *testing.B) {
	l := openPebble(b, b.TempDir())
	defer l.Close()
	ctx := context.Background()
	data := bytes.Repeat([]byte("a"), 256)
	const n = 100000
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				if _, err := l.Append(ctx, data); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ResetTimer()
	read := 0
	next := uint64(1)
	for read < b.N {
		recs, err := l.Read(ctx, next, 256)
		if err != nil {
			b.Fatal(err)
		}
		if len(recs) == 0 {
			next = 1
			continue
		}
		read += len(recs)
		next = recs[len(recs)-1].Offset + 1
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkAppendAsync measures AppendAsync with up to 1024 records in
// flight, as 32 devices with a window of 32 would keep.
func BenchmarkAppendAsync(b *testing.B) {
	l := openPebble(b, b.TempDir())
	defer l.Close()
	data := bytes.Repeat([]byte("a"), 256)
	sem := make(chan struct{}, 1024)
	var failed atomic.Value
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		sem <- struct{}{}
		l.AppendAsync(data, func(_ uint64, err error) {
			if err != nil {
				failed.Store(err)
			}
			<-sem
		})
	}
	for range cap(sem) {
		sem <- struct{}{}
	}
	if err := failed.Load(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// Commits are paced only while appends come from several writers: then they
// start at least CommitInterval apart; a lone writer waiting for each append
// is never held back.
func TestPebbleCommitInterval(t *testing.T) {
	const interval = 20 * time.Millisecond
	l, err := msglog.OpenPebble(t.TempDir(), msglog.PebbleOptions{Logger: quiet(), CommitInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()

	start := time.Now()
	for i := range 100 {
		if _, err := l.Append(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took > 100*interval/2 {
		t.Fatalf("100 appends by one writer took %v: a lone writer was paced", took)
	}

	before := l.Stats()
	start = time.Now()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range 20 {
				if _, err := l.Append(ctx, []byte{byte(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	after := l.Stats()
	commits := after.Commits - before.Commits
	if after.Appends-before.Appends != 320 {
		t.Fatalf("appended %d, want 320", after.Appends-before.Appends)
	}
	// Pacing allows one commit per interval (plus the first, and the
	// single-record commits that end a burst).
	if limit := uint64(took/interval) + 3; commits > limit {
		t.Fatalf("%d commits in %v: more than one per %v", commits, took, interval)
	}
	if commits >= 320/2 {
		t.Fatalf("%d commits for 320 concurrent appends: nothing was gathered", commits)
	}
}

// OnCommit tells of every commit's records, how long its first append waited
// for durability (pacing included) and how long the write and fsync took.
func TestPebbleOnCommit(t *testing.T) {
	const interval = 20 * time.Millisecond
	var mu sync.Mutex
	var records int
	var maxWait time.Duration
	var bad []string
	l, err := msglog.OpenPebble(t.TempDir(), msglog.PebbleOptions{
		Logger: quiet(), CommitInterval: interval,
		OnCommit: func(n int, wait, sync time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			records += n
			maxWait = max(maxWait, wait)
			if n <= 0 || sync <= 0 || wait < sync {
				bad = append(bad, fmt.Sprintf("n=%d wait=%v sync=%v", n, wait, sync))
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var slowest atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range 25 {
				start := time.Now()
				if _, err := l.Append(context.Background(), []byte{byte(i)}); err != nil {
					t.Error(err)
					return
				}
				took := int64(time.Since(start))
				for {
					old := slowest.Load()
					if took <= old || slowest.CompareAndSwap(old, took) {
						break
					}
				}
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if records != 200 || len(bad) > 0 {
		t.Fatalf("OnCommit saw %d records of 200; incoherent calls: %v", records, bad)
	}
	// The slowest append waited through a paced interval; the first append
	// of its group waited at least as long as the last, so the commit it
	// was in must report a wait near it.
	if s := time.Duration(slowest.Load()); s < interval/2 || maxWait < s/2 {
		t.Fatalf("slowest append took %v, longest reported wait %v", s, maxWait)
	}
}
