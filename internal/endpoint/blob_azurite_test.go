package endpoint

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
	"github.com/hamba/avro/v2/ocf"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
)

// Integration tests: a real Worker over an in-memory log delivers to a real
// Azurite; blobs are read back with azblob and decoded with hamba/avro's OCF
// decoder (which parses the container format itself, independently of the
// sink's block framing) or encoding/json.

var blobTestEnqueued = time.Date(2026, 11, 22, 10, 56, 7, 123456700, time.UTC)

// testMessage is the i'th message of a tag: JSON, binary and text bodies in
// turn, and every few an empty one.
func blobTestMessage(tag string, i int) message.Message {
	m := message.Message{
		Properties: map[string]string{"tag": tag, "i": strconv.Itoa(i), "unicode": "grüße € <&>"},
		System: map[string]string{
			message.SysMessageID:        fmt.Sprintf("m-%s-%d", tag, i),
			message.SysConnectionDevice: "dev-1",
			message.SysConnectionAuth:   `{"scope":"device","type":"sas","issuer":"iothub"}`,
			message.SysEnqueuedTime:     blobTestEnqueued.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano),
			message.SysMessageSource:    "Telemetry",
		},
		Enqueued: blobTestEnqueued.Add(time.Duration(i) * time.Millisecond),
	}
	switch {
	case i%7 == 6:
		// no body
	case i%3 == 0:
		m.Body = fmt.Appendf(nil, `{"n": %d, "tag": %q, "nested": {"a": [1, 2]}}`, i, tag)
		m.System[message.SysContentType] = "application/json"
		m.System[message.SysContentEncoding] = "utf-8"
	case i%3 == 1:
		m.Body = make([]byte, 64+i%50)
		for j := range m.Body {
			m.Body[j] = byte(i*31 + j*7)
		}
	default:
		m.Body = []byte(strings.Repeat("text line\n", 1+i%4))
		m.System[message.SysContentType] = "text/plain"
	}
	return m
}

func blobAppend(t *testing.T, l msglog.Log, tag string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		rec, err := msglog.EncodeMessage(blobTestMessage(tag, i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
}

// newTestStorage returns a sink on az with a short window (a Go-level
// override below the 1 s configuration floor, to keep tests fast).
func newTestStorage(t *testing.T, az *azurite, window time.Duration, mutate func(*StorageContainerConfig)) *StorageContainer {
	t.Helper()
	cfg := StorageContainerConfig{Name: "archive", ConnectionString: az.ConnectionString(), ContainerName: testContainer(t), HubName: "testhub", transport: az.HTTPClient()}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewStorageContainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.cfg.window = window
	return s
}

func newTestWorker(log, dead msglog.Log, sink Sink) *Worker {
	return NewWorker(Config{
		Name: "archive", Log: log, Sink: sink, DeadLetters: dead, BatchSize: 16,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
		Select: func(uint64, message.Message) (bool, map[string]string) {
			return true, map[string]string{"site": "berlin"}
		},
	})
}

// runWorker runs w until the returned stop is called; stop fails the test if
// Run returned an error.
func runWorker(t *testing.T, w *Worker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitUntil(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cursorAt(l msglog.Log, w *Worker) uint64 {
	c, _ := l.Cursor(context.Background(), w.Consumer())
	return c
}

type storedBlob struct {
	name string
	data []byte
}

func listBlobs(t *testing.T, az *azurite, containerName string) []storedBlob {
	t.Helper()
	ctx := context.Background()
	cc, err := container.NewClientFromConnectionString(az.ConnectionString(), containerName,
		&container.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: az.HTTPClient()}})
	if err != nil {
		t.Fatal(err)
	}
	var out []storedBlob
	pager := cc.NewListBlobsFlatPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("list blobs: %v", err)
		}
		for _, it := range page.Segment.BlobItems {
			resp, err := cc.NewBlobClient(*it.Name).DownloadStream(ctx, nil)
			if err != nil {
				t.Fatalf("download %s: %v", *it.Name, err)
			}
			data, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, storedBlob{*it.Name, data})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// readRecord is a decoded blob record, typed independently of the sink's.
type readRecord struct {
	EnqueuedTimeUtc  string            `avro:"EnqueuedTimeUtc" json:"EnqueuedTimeUtc"`
	Properties       map[string]string `avro:"Properties" json:"Properties"`
	SystemProperties map[string]string `avro:"SystemProperties" json:"SystemProperties"`
	AvroBody         *[]byte           `avro:"Body" json:"-"`
	JSONBody         json.RawMessage   `avro:"-" json:"Body"`
}

// decodeAvro reads an Avro container file and checks its schema and codec.
func decodeAvro(t *testing.T, name string, data []byte, codec string) []readRecord {
	t.Helper()
	dec, err := ocf.NewDecoder(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: not an Avro file: %v", name, err)
	}
	if got := string(dec.Metadata()["avro.codec"]); got != codec {
		t.Fatalf("%s: codec %q, want %q", name, got, codec)
	}
	var schema map[string]any
	if err := json.Unmarshal(dec.Metadata()["avro.schema"], &schema); err != nil || schema["name"] != "Message" || schema["namespace"] != "Microsoft.Azure.Devices" {
		t.Fatalf("%s: schema %s (%v)", name, dec.Metadata()["avro.schema"], err)
	}
	var out []readRecord
	for dec.HasNext() {
		var r readRecord
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("%s: record %d: %v", name, len(out), err)
		}
		out = append(out, r)
	}
	if err := dec.Error(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

func decodeJSONLines(t *testing.T, name string, data []byte) []readRecord {
	t.Helper()
	var out []readRecord
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r readRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: line %d: %v: %s", name, len(out)+1, err, sc.Text())
		}
		out = append(out, r)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("%s: last line not terminated", name)
	}
	return out
}

// decodeBlobs decodes every blob and returns the records by tag/i, and the
// number of records that were duplicates.
func decodeBlobs(t *testing.T, blobs []storedBlob, encoding string) (map[string]readRecord, map[string]int) {
	t.Helper()
	got := map[string]readRecord{}
	count := map[string]int{}
	for _, b := range blobs {
		var recs []readRecord
		switch encoding {
		case EncodingJSON:
			recs = decodeJSONLines(t, b.name, b.data)
		case EncodingAvroDeflate:
			recs = decodeAvro(t, b.name, b.data, "deflate")
		default:
			recs = decodeAvro(t, b.name, b.data, "null")
		}
		for _, r := range recs {
			key := r.Properties["tag"] + "/" + r.Properties["i"]
			got[key] = r
			count[key]++
		}
	}
	return got, count
}

// checkRecord compares a decoded record with the message it came from.
func checkRecord(t *testing.T, encoding string, r readRecord, m message.Message) {
	t.Helper()
	key := m.Properties["tag"] + "/" + m.Properties["i"]
	if r.EnqueuedTimeUtc != m.Enqueued.UTC().Format("2006-01-02T15:04:05.0000000Z") {
		t.Errorf("%s: EnqueuedTimeUtc %q", key, r.EnqueuedTimeUtc)
	}
	for k, v := range m.Properties {
		if r.Properties[k] != v {
			t.Errorf("%s: property %s = %q, want %q", key, k, r.Properties[k], v)
		}
	}
	if r.Properties["site"] != "berlin" || len(r.Properties) != len(m.Properties)+1 {
		t.Errorf("%s: properties %v (want the originals and the enrichment)", key, r.Properties)
	}
	sp := r.SystemProperties
	if sp["messageId"] != m.System[message.SysMessageID] || sp["connectionDeviceId"] != "dev-1" ||
		sp["connectionAuthMethod"] != m.System[message.SysConnectionAuth] || sp["enqueuedTime"] != r.EnqueuedTimeUtc ||
		sp["contentType"] != m.System[message.SysContentType] || sp["iothub-message-source"] != "Telemetry" {
		t.Errorf("%s: system properties %v", key, sp)
	}
	var body []byte
	switch encoding {
	case EncodingJSON:
		if m.System[message.SysContentType] == "application/json" {
			var c bytes.Buffer
			_ = json.Compact(&c, m.Body)
			if string(r.JSONBody) != c.String() {
				t.Errorf("%s: JSON body %s, want it embedded: %s", key, r.JSONBody, c.String())
			}
			return
		}
		var s string
		if err := json.Unmarshal(r.JSONBody, &s); err != nil {
			t.Fatalf("%s: body %s is not a base64 string", key, r.JSONBody)
		}
		var err error
		if body, err = base64.StdEncoding.DecodeString(s); err != nil {
			t.Fatalf("%s: body: %v", key, err)
		}
	default:
		if r.AvroBody != nil {
			body = *r.AvroBody
		}
		if len(m.Body) == 0 && r.AvroBody != nil {
			t.Errorf("%s: empty body written as bytes, want null", key)
		}
	}
	if !bytes.Equal(body, m.Body) {
		t.Errorf("%s: body %q, want %q", key, body, m.Body)
	}
}

// testContainer is a container name of the (sub)test's own.
func testContainer(t *testing.T) string {
	name := strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-"))
	name = strings.Trim(strings.TrimPrefix(name, "teststoragecontainerazurite-"), "-")
	if len(name) > 63 {
		name = strings.Trim(name[len(name)-63:], "-")
	}
	return name
}

// TestStorageContainerAzurite runs the integration tests against one
// Azurite (it starts in seconds; the tests that stop it start it again).
func TestStorageContainerAzurite(t *testing.T) {
	az := startAzurite(t)
	for _, tt := range []struct {
		name string
		test func(*testing.T, *azurite)
	}{
		{"encodings", testStorageEncodingsThroughWorker},
		{"windows", testStorageWindowsAndEmptyBlobs},
		{"chunks", testStorageChunkRollover},
		{"restart", testStorageRestartRedelivers},
		{"outage", testStorageSurvivesStorageOutage},
		{"deadletters", testStorageDeadLetters},
		{"lostblocks", testStorageContainerDeletedMidWindow},
		{"sas", testStorageSAS},
		{"send", testStorageSend},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.test(t, az) })
		if az.cmd == nil {
			az.Start() // a failed outage test left it stopped
		}
	}
}

var defaultNameRE = regexp.MustCompile(`^testhub/0/\d{4}/\d{2}/\d{2}/\d{2}/\d{2}(_\d+)?$`)

func testStorageEncodingsThroughWorker(t *testing.T, az *azurite) {
	for _, enc := range []string{EncodingAvro, EncodingAvroDeflate, EncodingJSON} {
		t.Run(enc, func(t *testing.T) {
			containerName := testContainer(t)
			log := msglog.NewMemory()
			const n = 60
			blobAppend(t, log, "a", 0, n)
			s := newTestStorage(t, az, 300*time.Millisecond, func(c *StorageContainerConfig) {
				c.Encoding = strings.ToLower(enc) // case-insensitive, like IoT Hub
				c.ContainerName = containerName
			})
			w := newTestWorker(log, nil, s)
			stop := runWorker(t, w)
			waitUntil(t, "cursor past every message", 20*time.Second, func() bool { return cursorAt(log, w) == n+1 })
			if h := w.Health(); h.HealthStatus != Healthy {
				t.Fatalf("health %+v", h)
			}
			stop()
			blobs := listBlobs(t, az, containerName)
			got, count := decodeBlobs(t, blobs, enc)
			for i := range n {
				m := blobTestMessage("a", i)
				r, ok := got["a/"+strconv.Itoa(i)]
				if !ok {
					t.Fatalf("message %d missing from %d blobs", i, len(blobs))
				}
				checkRecord(t, enc, r, m)
				if count["a/"+strconv.Itoa(i)] != 1 {
					t.Errorf("message %d written %d times", i, count["a/"+strconv.Itoa(i)])
				}
			}
			for _, b := range blobs {
				if !defaultNameRE.MatchString(b.name) {
					t.Errorf("blob name %q does not follow the default format", b.name)
				}
			}
		})
	}
}

func testStorageWindowsAndEmptyBlobs(t *testing.T, az *azurite) {
	log := msglog.NewMemory()
	s := newTestStorage(t, az, 400*time.Millisecond, func(c *StorageContainerConfig) {
		c.FileNameFormat = "{iothub}-{YYYY}{MM}{DD}/{HH}{mm}/p{partition}.avro"
	})
	w := newTestWorker(log, nil, s)
	runWorker(t, w)
	blobAppend(t, log, "w1", 0, 10)
	waitUntil(t, "first window committed", 10*time.Second, func() bool { return cursorAt(log, w) == 11 })
	// A quiet window, then a second batch in a later window.
	time.Sleep(900 * time.Millisecond)
	blobAppend(t, log, "w2", 0, 10)
	waitUntil(t, "second window committed", 10*time.Second, func() bool { return cursorAt(log, w) == 21 })

	blobs := listBlobs(t, az, testContainer(t))
	nameRE := regexp.MustCompile(`^testhub-\d{8}/\d{4}/p0(_\d+)?\.avro$`)
	windowOf := map[string]string{} // tag -> blob
	empty := 0
	for _, b := range blobs {
		if !nameRE.MatchString(b.name) {
			t.Errorf("blob name %q does not follow the format (chunk suffix before .avro)", b.name)
		}
		recs := decodeAvro(t, b.name, b.data, "null")
		if len(recs) == 0 {
			empty++
		}
		for _, r := range recs {
			if prev, ok := windowOf[r.Properties["tag"]]; ok && prev != b.name {
				t.Errorf("batch %s split over %s and %s", r.Properties["tag"], prev, b.name)
			}
			windowOf[r.Properties["tag"]] = b.name
		}
	}
	if windowOf["w1"] == "" || windowOf["w2"] == "" || windowOf["w1"] == windowOf["w2"] {
		t.Fatalf("want the two batches in two blobs: %v", windowOf)
	}
	if empty == 0 {
		t.Errorf("no empty blob for the quiet windows among %d blobs", len(blobs))
	}
	got, count := decodeBlobs(t, blobs, EncodingAvro)
	if len(got) != 20 {
		t.Fatalf("%d distinct messages, want 20", len(got))
	}
	for k, c := range count {
		if c != 1 {
			t.Errorf("%s written %d times", k, c)
		}
	}
}

func testStorageChunkRollover(t *testing.T, az *azurite) {
	for _, enc := range []string{EncodingAvro, EncodingAvroDeflate, EncodingJSON} {
		t.Run(enc, func(t *testing.T) {
			containerName := testContainer(t)
			log := msglog.NewMemory()
			const n = 200
			blobAppend(t, log, "c", 0, n)
			// A long window: only the size and block limits end blobs here.
			s := newTestStorage(t, az, time.Hour, func(c *StorageContainerConfig) {
				c.Encoding = enc
				c.ContainerName = containerName
			})
			s.cfg.maxChunk = 4096 // below the configurable floor, to roll over often
			s.maxBlock = 3
			s.blockTarget = 1000
			w := newTestWorker(log, nil, s)
			stop := runWorker(t, w)
			// The last blob stays pending until the hour ends; everything
			// before it must be committed and the cursor just past it.
			waitUntil(t, "chunks committed", 20*time.Second, func() bool { return cursorAt(log, w) > n/2 })
			last := uint64(0)
			waitUntil(t, "the cursor to settle", 20*time.Second, func() bool {
				time.Sleep(300 * time.Millisecond)
				c := cursorAt(log, w)
				settled := c == last
				last = c
				return settled
			})
			stop()
			committed := cursorAt(log, w)
			blobs := listBlobs(t, az, containerName)
			if len(blobs) < 3 {
				t.Fatalf("%d blobs; want several chunks", len(blobs))
			}
			got, count := decodeBlobs(t, blobs, enc)
			for i := range int(committed) - 1 {
				key := "c/" + strconv.Itoa(i)
				if _, ok := got[key]; !ok {
					t.Fatalf("message %d is behind the cursor (%d) but in no blob", i, committed)
				}
				if count[key] != 1 {
					t.Errorf("%s written %d times", key, count[key])
				}
			}
			if len(got) != int(committed)-1 {
				t.Errorf("%d messages in blobs, cursor at %d", len(got), committed)
			}
			cc, err := container.NewClientFromConnectionString(az.ConnectionString(), containerName,
				&container.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: az.HTTPClient()}})
			if err != nil {
				t.Fatal(err)
			}
			most := 0
			base := ""
			for i, b := range blobs {
				bl, err := cc.NewBlockBlobClient(b.name).GetBlockList(context.Background(), blockblob.BlockListTypeCommitted, nil)
				if err != nil {
					t.Fatal(err)
				}
				if n := len(bl.CommittedBlocks); n > 3 {
					t.Errorf("%s has %d blocks, over the limit of 3", b.name, n)
				} else {
					most = max(most, n)
				}
				if len(b.data) > 4096 {
					t.Errorf("%s is %d bytes, over the chunk size", b.name, len(b.data))
				}
				if !defaultNameRE.MatchString(b.name) {
					t.Errorf("blob name %q", b.name)
				}
				if i == 0 {
					base = b.name
				} else if !strings.HasPrefix(b.name, base+"_") {
					t.Errorf("chunk %q is not %s_<n>", b.name, base)
				}
			}
			if most < 2 {
				t.Errorf("no blob of several blocks")
			}
		})
	}
}

// stagedRecords is how many messages the sink's pending blob holds (staged
// or buffered).
func stagedRecords(s *StorageContainer) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unit == nil {
		return 0
	}
	return s.unit.records
}

func stagedBlocks(s *StorageContainer) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unit == nil {
		return 0
	}
	return len(s.unit.blocks)
}

// checkAll checks that blobs hold messages 0..n-1 of tag exactly
// once (every one at least once; duplicates are reported separately).
func checkAll(t *testing.T, got map[string]readRecord, count map[string]int, tag string, n int) (dups int) {
	t.Helper()
	for i := range n {
		key := tag + "/" + strconv.Itoa(i)
		if _, ok := got[key]; !ok {
			t.Errorf("message %s lost", key)
		}
		if count[key] > 1 {
			dups += count[key] - 1
		}
	}
	return dups
}

func testStorageSurvivesStorageOutage(t *testing.T, az *azurite) {
	log := msglog.NewMemory()
	s := newTestStorage(t, az, 1500*time.Millisecond, nil)
	s.blockTarget = 1000 // blocks reach storage before the commit is due
	w := newTestWorker(log, nil, s)
	runWorker(t, w)

	// Flush fails: storage goes away after the blocks are staged.
	blobAppend(t, log, "o", 0, 30)
	waitUntil(t, "30 messages staged", 10*time.Second, func() bool { return stagedRecords(s) == 30 })
	if b := stagedBlocks(s); b < 2 {
		t.Fatalf("%d blocks staged", b)
	}
	az.Stop()
	waitUntil(t, "a failed commit", 10*time.Second, func() bool { return w.Health().HealthStatus == Unhealthy })
	if c := cursorAt(log, w); c != 1 {
		t.Fatalf("cursor moved to %d before the blob was committed", c)
	}
	az.Start()
	waitUntil(t, "the blob committed after the outage", 20*time.Second, func() bool { return cursorAt(log, w) == 31 })

	// Stage fails: storage is away when the messages arrive.
	az.Stop()
	blobAppend(t, log, "o", 30, 50)
	waitUntil(t, "a failed stage", 10*time.Second, func() bool { return w.Health().HealthStatus == Unhealthy })
	if c := cursorAt(log, w); c != 31 {
		t.Fatalf("cursor moved to %d while storage was away", c)
	}
	az.Start()
	waitUntil(t, "everything committed", 20*time.Second, func() bool { return cursorAt(log, w) == 51 })
	if h := w.Health(); h.HealthStatus != Degraded && h.HealthStatus != Healthy {
		t.Errorf("health after recovery: %+v", h)
	}

	got, count := decodeBlobs(t, listBlobs(t, az, testContainer(t)), EncodingAvro)
	if dups := checkAll(t, got, count, "o", 50); dups != 0 {
		t.Errorf("%d duplicates; retried stages and commits should not duplicate", dups)
	}
}

func testStorageRestartRedelivers(t *testing.T, az *azurite) {
	log := msglog.NewMemory()

	// A worker stopped mid-window commits nothing: the cursor stays, the
	// staged blocks are never committed.
	s1 := newTestStorage(t, az, time.Hour, nil)
	w1 := newTestWorker(log, nil, s1)
	stop1 := runWorker(t, w1)
	blobAppend(t, log, "r", 0, 40)
	waitUntil(t, "40 messages staged", 10*time.Second, func() bool { return stagedRecords(s1) == 40 })
	stop1()
	if c := cursorAt(log, w1); c != 1 {
		t.Fatalf("cursor %d after a shutdown mid-window", c)
	}
	if blobs := listBlobs(t, az, testContainer(t)); len(blobs) != 0 {
		t.Fatalf("a half window was committed: %v", blobs[0].name)
	}

	// The next worker delivers everything again.
	s2 := newTestStorage(t, az, 300*time.Millisecond, nil)
	w2 := newTestWorker(log, nil, s2)
	stop2 := runWorker(t, w2)
	waitUntil(t, "re-delivery", 10*time.Second, func() bool { return cursorAt(log, w2) == 41 })
	stop2()
	got, count := decodeBlobs(t, listBlobs(t, az, testContainer(t)), EncodingAvro)
	dups := checkAll(t, got, count, "r", 40)
	t.Logf("restart mid-window: %d duplicates", dups)
	if dups != 0 {
		t.Errorf("%d duplicates after a restart mid-window", dups)
	}

	// A crash between the commit of a blob and the commit of the cursor
	// delivers the window again (at least once) into a new blob: the blob
	// already written is never overwritten.
	if err := log.Commit(context.Background(), w2.Consumer(), 1); err != nil {
		t.Fatal(err)
	}
	before := listBlobs(t, az, testContainer(t))
	s3 := newTestStorage(t, az, 300*time.Millisecond, nil)
	w3 := newTestWorker(log, nil, s3)
	stop3 := runWorker(t, w3)
	waitUntil(t, "second re-delivery", 10*time.Second, func() bool { return cursorAt(log, w3) == 41 })
	stop3()
	after := listBlobs(t, az, testContainer(t))
	for _, b := range before {
		i := sort.Search(len(after), func(i int) bool { return after[i].name >= b.name })
		if i == len(after) || after[i].name != b.name || !bytes.Equal(after[i].data, b.data) {
			t.Errorf("blob %s was overwritten or removed", b.name)
		}
	}
	got, count = decodeBlobs(t, after, EncodingAvro)
	dups = checkAll(t, got, count, "r", 40)
	t.Logf("lost cursor commit: %d duplicates", dups)
	if dups != 40 {
		t.Errorf("%d duplicates, want the 40 re-delivered", dups)
	}
}

func testStorageDeadLetters(t *testing.T, az *azurite) {
	log, dead := msglog.NewMemory(), msglog.NewMemory()
	s := newTestStorage(t, az, time.Second, nil)
	w := newTestWorker(log, dead, s)
	w.cfg.RetryPeriod = 300 * time.Millisecond
	runWorker(t, w)

	// The commit keeps failing: the staged blob's messages are read again
	// from the log and dead-lettered, and the cursor moves past them.
	blobAppend(t, log, "d", 0, 25)
	waitUntil(t, "25 messages staged", 10*time.Second, func() bool { return stagedRecords(s) == 25 })
	az.Stop()
	waitUntil(t, "dead letters of the pending blob", 10*time.Second, func() bool { return dead.Last() == 25 })
	waitUntil(t, "cursor past the dead letters", 10*time.Second, func() bool { return cursorAt(log, w) == 26 })
	if h := w.Health(); h.HealthStatus != Dead {
		t.Errorf("health %+v", h)
	}

	// Staging keeps failing: the batch is dead-lettered.
	blobAppend(t, log, "d", 25, 30)
	waitUntil(t, "dead letters of the batch", 10*time.Second, func() bool { return dead.Last() == 30 })
	waitUntil(t, "cursor past them", 10*time.Second, func() bool { return cursorAt(log, w) == 31 })

	recs, err := dead.Read(context.Background(), 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		m, err := msglog.DecodeMessage(r.Data)
		if err != nil {
			t.Fatal(err)
		}
		if m.Properties["i"] != strconv.Itoa(i) || m.Properties["site"] != "berlin" {
			t.Errorf("dead letter %d: %v (want message %d, enriched)", i, m.Properties, i)
		}
	}

	// Storage back: delivery resumes.
	az.Start()
	blobAppend(t, log, "e", 0, 5)
	waitUntil(t, "delivery after the outage", 20*time.Second, func() bool { return cursorAt(log, w) == 36 })
	got, _ := decodeBlobs(t, listBlobs(t, az, testContainer(t)), EncodingAvro)
	checkAll(t, got, nil, "e", 5)
}

// testStorageSAS writes with a container-scoped SAS connection string: the
// SAS may not create the container (it exists already here).
func testStorageSAS(t *testing.T, az *azurite) {
	ctx := context.Background()
	name := testContainer(t)
	cc, err := container.NewClientFromConnectionString(az.ConnectionString(), name,
		&container.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: az.HTTPClient()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.Create(ctx, nil); err != nil {
		t.Fatal(err)
	}
	sasURL, err := cc.GetSASURL(sas.ContainerPermissions{Read: true, Write: true, Create: true, Add: true}, time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, query, _ := strings.Cut(sasURL, "?")
	log := msglog.NewMemory()
	blobAppend(t, log, "s", 0, 10)
	s := newTestStorage(t, az, 300*time.Millisecond, func(c *StorageContainerConfig) {
		c.ConnectionString = "BlobEndpoint=http://" + az.Addr() + "/devstoreaccount1;SharedAccessSignature=" + query
	})
	w := newTestWorker(log, nil, s)
	stop := runWorker(t, w)
	waitUntil(t, "delivery with a SAS", 10*time.Second, func() bool { return cursorAt(log, w) == 11 })
	stop()
	got, count := decodeBlobs(t, listBlobs(t, az, name), EncodingAvro)
	if dups := checkAll(t, got, count, "s", 10); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
}

// testStorageSend uses the sink outside a Worker: Send writes at once, in as
// many blobs as the chunk size needs.
func testStorageSend(t *testing.T, az *azurite) {
	s := newTestStorage(t, az, time.Hour, func(c *StorageContainerConfig) { c.Encoding = EncodingJSON })
	s.cfg.maxChunk = 8192
	var batch []message.Message
	for i := range 50 {
		batch = append(batch, blobTestMessage("send", i))
	}
	if err := s.Send(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	blobs := listBlobs(t, az, testContainer(t))
	if len(blobs) < 2 {
		t.Fatalf("%d blobs for %d bytes of records in 8 KiB chunks", len(blobs), 50*300)
	}
	got, count := decodeBlobs(t, blobs, EncodingJSON)
	if dups := checkAll(t, got, count, "send", 50); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
}

// BenchmarkStorageContainer measures the sink against Azurite on loopback:
// messages staged in worker-sized batches of 100 and committed in blobs of
// maxChunkSizeInBytes, so mostly encoding and block uploads.
func BenchmarkStorageContainer(b *testing.B) {
	az := startAzurite(b)
	for _, enc := range []string{EncodingAvro, EncodingAvroDeflate, EncodingJSON} {
		b.Run(enc, func(b *testing.B) {
			cfg := StorageContainerConfig{Name: "bench", ConnectionString: az.ConnectionString(), ContainerName: "bench-" + strings.ToLower(enc),
				HubName: "benchhub", Encoding: enc, transport: az.HTTPClient()}
			s, err := NewStorageContainer(cfg)
			if err != nil {
				b.Fatal(err)
			}
			batch := make([]message.Message, 100)
			size := 0
			for i := range batch {
				batch[i] = blobTestMessage("bench", i)
				size += len(batch[i].Body)
			}
			ctx := context.Background()
			commit := func() {
				s.mu.Lock()
				defer s.mu.Unlock()
				if s.unit != nil {
					if err := s.commitLocked(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.SetBytes(int64(size / len(batch)))
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(len(batch), b.N-done)
				k, err := s.Stage(ctx, batch[:n])
				if err != nil {
					b.Fatal(err)
				}
				if k < n {
					commit() // the blob is full
				}
				done += k
			}
			commit()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// testStorageContainerDeletedMidWindow: the container is deleted while a blob's
// blocks are staged. Those blocks are gone, so no retry of the commit can work;
// the worker stages the messages again from the log into a new blob in the
// re-created container, and nothing is dead-lettered even with a short retry
// period.
func testStorageContainerDeletedMidWindow(t *testing.T, az *azurite) {
	containerName := testContainer(t)
	log, dead := msglog.NewMemory(), msglog.NewMemory()
	s := newTestStorage(t, az, 1500*time.Millisecond, func(c *StorageContainerConfig) {
		c.ContainerName = containerName
		c.Encoding = EncodingJSON
	})
	s.blockTarget = 1000 // blocks reach storage before the commit is due
	w := newTestWorker(log, dead, s)
	w.cfg.RetryPeriod = 5 * time.Second
	runWorker(t, w)
	blobAppend(t, log, "lost", 0, 20)
	waitUntil(t, "20 messages staged", 10*time.Second, func() bool { return stagedRecords(s) == 20 && stagedBlocks(s) > 0 })
	cc, err := container.NewClientFromConnectionString(az.ConnectionString(), containerName,
		&container.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: az.HTTPClient()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.Delete(context.Background(), nil); err != nil {
		t.Fatalf("delete container: %v", err)
	}
	waitUntil(t, "cursor past every message", 20*time.Second, func() bool { return cursorAt(log, w) == 21 })
	if dead.Last() != 0 {
		t.Fatalf("%d dead letters; the messages should have been staged again", dead.Last())
	}
	got, count := decodeBlobs(t, listBlobs(t, az, containerName), EncodingJSON)
	for i := range 20 {
		if _, ok := got["lost/"+strconv.Itoa(i)]; !ok || count["lost/"+strconv.Itoa(i)] != 1 {
			t.Fatalf("message %d: present %v, %d times", i, ok, count["lost/"+strconv.Itoa(i)])
		}
	}
}
