package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/registry/sqlitestore"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newRegistry(t *testing.T, devices ...string) *registry.Registry {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "reg.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg := registry.New(st, registry.Options{HubName: "test.local"})
	for _, d := range devices {
		if _, err := reg.CreateDevice(context.Background(), registry.Device{DeviceID: d}); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

func newStore(t *testing.T) *SQLiteStore {
	t.Helper()
	st, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "jobs.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// fakeInvoker answers methods for the devices in online; others are offline.
// A device in block waits until its context ends.
type fakeInvoker struct {
	online map[string]bool
	block  map[string]bool
	calls  atomic.Int32
	// inFlight and maxInFlight measure concurrency.
	inFlight, maxInFlight atomic.Int32
	delay                 time.Duration
	started               chan string
}

func (f *fakeInvoker) Invoke(ctx context.Context, deviceID, moduleID string, req methods.Request) (methods.Result, error) {
	f.calls.Add(1)
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxInFlight.Load()
		if n <= m || f.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	if f.started != nil {
		f.started <- deviceID
	}
	if f.block[deviceID] {
		<-ctx.Done()
		return methods.Result{}, ctx.Err()
	}
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			return methods.Result{}, ctx.Err()
		}
	}
	if !f.online[deviceID] {
		return methods.Result{}, errcode.New(errcode.DeviceNotOnline, "device %s is not online", deviceID)
	}
	return methods.Result{Status: 200, Payload: json.RawMessage(`{"got":` + string(req.Payload) + `}`)}, nil
}

func startService(t *testing.T, opts Options) *Service {
	t.Helper()
	if opts.Store == nil {
		opts.Store = newStore(t)
	}
	opts.Log = quietLog()
	s := New(opts)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustParse(t *testing.T, body string, id string) Job {
	t.Helper()
	j, err := ParseRequest([]byte(body), id, time.Now())
	if err != nil {
		t.Fatalf("ParseRequest(%s): %v", body, err)
	}
	return j
}

// waitStatus polls until the job reaches one of statuses.
func waitStatus(t *testing.T, s *Service, id string, statuses ...Status) Job {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := s.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range statuses {
			if j.Status == st {
				return j
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s, want one of %v", id, j.Status, statuses)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTwinJobCompletes(t *testing.T) {
	reg := newRegistry(t, "a", "b", "c")
	s := startService(t, Options{Registry: reg})
	ctx := context.Background()
	j := mustParse(t, `{"jobId":"j1","type":"scheduleUpdateTwin","queryCondition":"deviceId IN ['a','b']",
		"updateTwin":{"etag":"*","tags":{"env":"prod"},"properties":{"desired":{"fw":2}}}}`, "j1")
	created, err := s.Create(ctx, j)
	if err != nil {
		t.Fatal(err)
	}
	if created.Status != StatusQueued {
		t.Fatalf("created status %s, want queued", created.Status)
	}
	done := waitStatus(t, s, "j1", StatusCompleted, StatusFailed)
	want := Statistics{DeviceCount: 2, SucceededCount: 2}
	if done.Status != StatusCompleted || done.DeviceJobStatistics != want {
		t.Fatalf("job = %s %+v, want completed %+v", done.Status, done.DeviceJobStatistics, want)
	}
	if done.EndTime == nil {
		t.Fatal("a completed job has no endTime")
	}
	for _, id := range []string{"a", "b"} {
		tw, err := reg.GetTwin(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		if tw.Tags["env"] != "prod" || fmt.Sprint(tw.Properties.Desired["fw"]) != "2" {
			t.Errorf("twin %s: tags %v desired %v", id, tw.Tags, tw.Properties.Desired)
		}
	}
	tw, _ := reg.GetTwin(ctx, "c", "")
	if _, ok := tw.Properties.Desired["fw"]; ok {
		t.Error("device c, not selected, was patched")
	}
	djs, err := s.opts.Store.DeviceJobs(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if len(djs) != 2 || djs[0].Status != DeviceCompleted || djs[1].Status != DeviceCompleted || djs[0].EndTimeUtc == nil {
		t.Fatalf("device jobs = %+v", djs)
	}
	if _, err := s.Create(ctx, j); !errcode.Is(err, JobAlreadyExists) {
		t.Fatalf("second create: %v, want JobAlreadyExists", err)
	}
}

func TestMethodJobRecordsEachDevice(t *testing.T) {
	reg := newRegistry(t, "on", "off")
	inv := &fakeInvoker{online: map[string]bool{"on": true}}
	s := startService(t, Options{Registry: reg, Methods: inv})
	ctx := context.Background()
	j := mustParse(t, `{"type":"scheduleDeviceMethod","queryCondition":"deviceId IN ['on','off']",
		"cloudToDeviceMethod":{"methodName":"reboot","payload":{"n":1},"responseTimeoutInSeconds":10}}`, "m1")
	if _, err := s.Create(ctx, j); err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, s, "m1", StatusCompleted, StatusFailed)
	if want := (Statistics{DeviceCount: 2, SucceededCount: 1, FailedCount: 1}); done.Status != StatusCompleted || done.DeviceJobStatistics != want {
		t.Fatalf("job = %s %+v, want completed %+v (an offline device fails itself, not the job)", done.Status, done.DeviceJobStatistics, want)
	}
	djs, _ := s.opts.Store.DeviceJobs(ctx, "m1")
	got := map[string]DeviceJob{}
	for _, dj := range djs {
		got[dj.DeviceID] = dj
	}
	on := got["on"]
	if on.Status != DeviceCompleted || on.Outcome == nil || on.Outcome.DeviceMethodResponse.Status != 200 ||
		string(on.Outcome.DeviceMethodResponse.Payload) != `{"got":{"n":1}}` {
		t.Errorf("online device result = %+v", on)
	}
	off := got["off"]
	if off.Status != DeviceFailed || off.Error == nil || off.Error.Code != "DeviceNotOnline" {
		t.Errorf("offline device result = %+v", off)
	}
}

func TestConcurrencyIsBounded(t *testing.T) {
	var ids []string
	online := map[string]bool{}
	for i := range 20 {
		id := fmt.Sprintf("d%02d", i)
		ids = append(ids, id)
		online[id] = true
	}
	reg := newRegistry(t, ids...)
	inv := &fakeInvoker{online: online, delay: 20 * time.Millisecond}
	s := startService(t, Options{Registry: reg, Methods: inv, Concurrency: 3})
	j := mustParse(t, `{"type":"scheduleDeviceMethod","queryCondition":"STARTS_WITH(deviceId, 'd')","cloudToDeviceMethod":{"methodName":"m"}}`, "c1")
	if _, err := s.Create(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, s, "c1", StatusCompleted)
	if done.DeviceJobStatistics.SucceededCount != 20 {
		t.Fatalf("stats %+v", done.DeviceJobStatistics)
	}
	if m := inv.maxInFlight.Load(); m > 3 || m < 2 {
		t.Fatalf("max concurrent calls = %d, want 2..3 with Concurrency 3", m)
	}
}

func TestFutureStartQueuedThenRuns(t *testing.T) {
	reg := newRegistry(t, "a")
	s := startService(t, Options{Registry: reg})
	ctx := context.Background()
	start := time.Now().Add(400 * time.Millisecond).UTC()
	body := fmt.Sprintf(`{"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","startTime":%q,
		"updateTwin":{"properties":{"desired":{"x":1}}}}`, start.Format(time.RFC3339Nano))
	created, err := s.Create(ctx, mustParse(t, body, "f1"))
	if err != nil {
		t.Fatal(err)
	}
	if created.Status != StatusQueued {
		t.Fatalf("status %s, want queued", created.Status)
	}
	waitStatus(t, s, "f1", StatusScheduled)
	if tw, _ := reg.GetTwin(ctx, "a", ""); tw.Properties.Desired["x"] != nil {
		t.Fatal("the twin changed before the start time")
	}
	done := waitStatus(t, s, "f1", StatusCompleted)
	if now := time.Now(); now.Before(start) {
		t.Fatalf("completed at %v, before the start time %v", now, start)
	}
	if done.DeviceJobStatistics.SucceededCount != 1 {
		t.Fatalf("stats %+v", done.DeviceJobStatistics)
	}
}

func TestCancelScheduledJob(t *testing.T) {
	reg := newRegistry(t, "a")
	s := startService(t, Options{Registry: reg})
	ctx := context.Background()
	body := fmt.Sprintf(`{"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","startTime":%q,
		"updateTwin":{"tags":{"t":1}}}`, time.Now().Add(300*time.Millisecond).UTC().Format(time.RFC3339Nano))
	if _, err := s.Create(ctx, mustParse(t, body, "x1")); err != nil {
		t.Fatal(err)
	}
	j, err := s.Cancel(ctx, "x1")
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != StatusCancelled || j.EndTime == nil {
		t.Fatalf("cancel answered %s endTime %v", j.Status, j.EndTime)
	}
	time.Sleep(600 * time.Millisecond) // past the start time: the job must not run
	if j, _ := s.Get(ctx, "x1"); j.Status != StatusCancelled {
		t.Fatalf("status %s after the start time, want cancelled", j.Status)
	}
	if tw, _ := reg.GetTwin(ctx, "a", ""); tw.Tags["t"] != nil {
		t.Fatal("a cancelled job patched the twin")
	}
	// cancelling again, or a finished job, changes nothing
	if j2, err := s.Cancel(ctx, "x1"); err != nil || j2.Status != StatusCancelled || !j2.EndTime.Equal(*j.EndTime) {
		t.Fatalf("second cancel = %+v, %v", j2, err)
	}
	if _, err := s.Cancel(ctx, "nope"); !errcode.Is(err, errcode.JobNotFound) {
		t.Fatalf("cancel of an unknown job: %v", err)
	}
}

func TestCancelRunningJob(t *testing.T) {
	reg := newRegistry(t, "a", "b", "c", "d")
	inv := &fakeInvoker{block: map[string]bool{"a": true, "b": true, "c": true, "d": true}, started: make(chan string, 4)}
	s := startService(t, Options{Registry: reg, Methods: inv, Concurrency: 2})
	ctx := context.Background()
	j := mustParse(t, `{"type":"scheduleDeviceMethod","queryCondition":"deviceId IN ['a','b','c','d']","cloudToDeviceMethod":{"methodName":"m"}}`, "r1")
	if _, err := s.Create(ctx, j); err != nil {
		t.Fatal(err)
	}
	<-inv.started
	<-inv.started
	running := waitStatus(t, s, "r1", StatusRunning)
	if st := running.DeviceJobStatistics; st.RunningCount != 2 || st.PendingCount != 2 || st.DeviceCount != 4 {
		t.Fatalf("live statistics %+v, want 2 running and 2 pending of 4", st)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	got, err := s.Cancel(cctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusCancelled || got.EndTime == nil {
		t.Fatalf("cancel answered %+v", got)
	}
	djs, _ := s.opts.Store.DeviceJobs(ctx, "r1")
	for _, dj := range djs {
		if dj.Status != DeviceCanceled {
			t.Errorf("device %s is %s after cancel, want canceled", dj.DeviceID, dj.Status)
		}
	}
	if n := inv.calls.Load(); n != 2 {
		t.Errorf("%d method calls, want 2 (the rest never start)", n)
	}
}

func TestMaxExecutionTime(t *testing.T) {
	reg := newRegistry(t, "a")
	inv := &fakeInvoker{block: map[string]bool{"a": true}}
	s := startService(t, Options{Registry: reg, Methods: inv})
	j := mustParse(t, `{"type":"scheduleDeviceMethod","queryCondition":"deviceId = 'a'","maxExecutionTimeInSeconds":1,"cloudToDeviceMethod":{"methodName":"m"}}`, "t1")
	if _, err := s.Create(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, s, "t1", StatusFailed, StatusCompleted)
	if done.Status != StatusFailed || done.FailureReason == "" || done.DeviceJobStatistics.FailedCount != 1 {
		t.Fatalf("job = %+v, want failed by its time limit", done)
	}
}

func TestBadConditionFailsJob(t *testing.T) {
	reg := newRegistry(t, "a")
	s := startService(t, Options{Registry: reg})
	// Parses as a condition, but the registry query over it is refused.
	j := mustParse(t, `{"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","updateTwin":{"tags":{"a":1}}}`, "b1")
	j.QueryCondition = "deviceId = 'a' GROUP BY"
	if _, err := s.Create(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, s, "b1", StatusFailed, StatusCompleted)
	if done.Status != StatusFailed || done.FailureReason == "" {
		t.Fatalf("job = %+v", done)
	}
}

func TestRestartResumesAndSchedules(t *testing.T) {
	reg := newRegistry(t, "a", "b")
	dir := t.TempDir()
	ctx := context.Background()
	open := func() *Service {
		s, err := Open(ctx, dir, Options{Registry: reg, Log: quietLog()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Jobs created while no scheduler runs wait in the store.
	s1 := open()
	if _, err := s1.Create(ctx, mustParse(t, `{"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'a'","updateTwin":{"tags":{"k":1}}}`, "p1")); err != nil {
		t.Fatal(err)
	}
	// A job that was running when the hub stopped, with one device done.
	st := s1.opts.Store
	run := mustParse(t, `{"type":"scheduleUpdateTwin","queryCondition":"deviceId IN ['a','b']","updateTwin":{"tags":{"r":1}}}`, "p2")
	run.Status = StatusRunning
	if err := st.CreateJob(ctx, run); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := st.PutDeviceJobs(ctx, []DeviceJob{
		{DeviceID: "a", JobID: "p2", JobType: run.Type, Status: DeviceCompleted, EndTimeUtc: &now},
		{DeviceID: "b", JobID: "p2", JobType: run.Type, Status: DeviceRunning},
	}); err != nil {
		t.Fatal(err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := open()
	if err := s2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if j := waitStatus(t, s2, "p1", StatusCompleted); j.DeviceJobStatistics.SucceededCount != 1 {
		t.Fatalf("p1 = %+v", j)
	}
	j := waitStatus(t, s2, "p2", StatusCompleted)
	if j.DeviceJobStatistics != (Statistics{DeviceCount: 2, SucceededCount: 2}) {
		t.Fatalf("p2 = %+v", j.DeviceJobStatistics)
	}
	ta, _ := reg.GetTwin(ctx, "a", "")
	tb, _ := reg.GetTwin(ctx, "b", "")
	if ta.Tags["r"] != nil {
		t.Error("device a, done before the restart, was patched again")
	}
	if fmt.Sprint(tb.Tags["r"]) != "1" {
		t.Error("device b, unfinished at the restart, was not patched")
	}
}

func TestListPagingAndFilters(t *testing.T) {
	reg := newRegistry(t, "a")
	s := New(Options{Store: newStore(t), Registry: reg, Log: quietLog()}) // not started: jobs stay queued
	ctx := context.Background()
	base := time.Now()
	for i := range 5 {
		typ := `"type":"scheduleUpdateTwin","updateTwin":{"tags":{"a":1}}`
		if i%2 == 1 {
			typ = `"type":"scheduleDeviceMethod","cloudToDeviceMethod":{"methodName":"m"}`
		}
		j, err := ParseRequest([]byte(`{`+typ+`,"queryCondition":"deviceId = 'a'"}`), fmt.Sprintf("l%d", i), base.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Create(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Cancel(ctx, "l4"); err != nil {
		t.Fatal(err)
	}
	var got []string
	cont, pages := "", 0
	for {
		page, next, err := s.List(ctx, "", "", 2, cont)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, j := range page {
			got = append(got, j.JobID)
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		cont = next
	}
	if fmt.Sprint(got) != "[l0 l1 l2 l3 l4]" || pages != 3 {
		t.Fatalf("pages %d, jobs %v", pages, got)
	}
	page, next, _ := s.List(ctx, "SCHEDULEDEVICEMETHOD", "", 0, "")
	if len(page) != 2 || next != "" || page[0].JobID != "l1" || page[1].JobID != "l3" {
		t.Fatalf("method jobs = %v next %q", page, next)
	}
	page, _, _ = s.List(ctx, "scheduleUpdateTwin", "cancelled", 0, "")
	if len(page) != 1 || page[0].JobID != "l4" {
		t.Fatalf("cancelled twin jobs = %v", page)
	}
	if _, _, err := s.List(ctx, "", "", 0, "!!"); !errcode.Is(err, errcode.ArgumentInvalid) {
		t.Fatalf("bad continuation: %v", err)
	}
}

func TestQueryDeviceJobs(t *testing.T) {
	s := New(Options{Store: newStore(t), Log: quietLog()})
	ctx := context.Background()
	var djs []DeviceJob
	for i := range 5 {
		st := DeviceCompleted
		if i == 2 {
			st = DeviceFailed
		}
		djs = append(djs, DeviceJob{DeviceID: fmt.Sprintf("d%d", i), JobID: "q", JobType: TypeScheduleUpdateTwin, Status: st})
	}
	djs = append(djs, DeviceJob{DeviceID: "d0", JobID: "other", JobType: TypeScheduleDeviceMethod, Status: DeviceCompleted})
	if err := s.opts.Store.PutDeviceJobs(ctx, djs); err != nil {
		t.Fatal(err)
	}
	items, next, err := s.QueryDeviceJobs(ctx, "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'q'", 3, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 3 || next == "" {
		t.Fatalf("first page: %d items, next %q", len(items), next)
	}
	items, next, err = s.QueryDeviceJobs(ctx, "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'q'", 3, next)
	if err != nil || len(items) != 2 || next != "" {
		t.Fatalf("second page: %d items, next %q, %v", len(items), next, err)
	}
	items, _, _ = s.QueryDeviceJobs(ctx, "SELECT deviceId FROM devices.jobs WHERE status = 'failed'", 0, "")
	if len(items) != 1 || items[0].(map[string]any)["deviceId"] != "d2" {
		t.Fatalf("failed devices = %v", items)
	}
	if _, _, err := s.QueryDeviceJobs(ctx, "SELECT * FROM devices", 0, ""); !errcode.Is(err, errcode.ArgumentInvalid) {
		t.Fatalf("wrong collection: %v", err)
	}
}

func TestStoreErrors(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if _, err := st.GetJob(ctx, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if _, err := st.UpdateJob(ctx, "x", func(*Job) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}
	j := Job{JobID: "x", Status: StatusQueued, CreatedTime: time.Now()}
	if err := st.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateJob(ctx, j); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	veto := errors.New("veto")
	if _, err := st.UpdateJob(ctx, "x", func(j *Job) error { j.Status = StatusFailed; return veto }); err != veto {
		t.Fatalf("vetoed update: %v", err)
	}
	if got, _ := st.GetJob(ctx, "x"); got.Status != StatusQueued {
		t.Fatalf("a vetoed update was written: %s", got.Status)
	}
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = st.UpdateJob(ctx, "x", func(j *Job) error { j.DeviceJobStatistics.DeviceCount++; return nil })
			_ = st.PutDeviceJobs(ctx, []DeviceJob{{JobID: "x", DeviceID: fmt.Sprint(i)}})
		}()
	}
	wg.Wait()
	got, _ := st.GetJob(ctx, "x")
	djs, _ := st.DeviceJobs(ctx, "x")
	if got.DeviceJobStatistics.DeviceCount != 10 || len(djs) != 10 {
		t.Fatalf("concurrent updates: count %d, %d device jobs", got.DeviceJobStatistics.DeviceCount, len(djs))
	}
}
