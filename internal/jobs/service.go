package jobs

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/query"
	"github.com/moat-iot/moat/internal/twin"
)

// Registry is what jobs need of the device registry (*registry.Registry).
type Registry interface {
	Query(ctx context.Context, q string, pageSize int, continuation string) (items []any, next string, err error)
	PatchTwin(ctx context.Context, deviceID, moduleID string, patch []byte, ifMatch string) (twin.Twin, error)
}

// Invoker runs direct methods (*methods.Invoker).
type Invoker interface {
	Invoke(ctx context.Context, deviceID, moduleID string, req methods.Request) (methods.Result, error)
}

// Options wires a Service.
type Options struct {
	Store    Store
	Registry Registry
	// Methods runs method jobs; nil fails each device of a method job.
	Methods Invoker
	// Concurrency bounds how many devices are worked on at once across all
	// jobs; <= 0 means DefaultConcurrency.
	Concurrency int
	// Now is the clock for the times jobs record; nil means time.Now.
	// Waiting for a start time always uses the real clock.
	Now func() time.Time
	Log *slog.Logger
}

// Service schedules and runs jobs. Create, Get, Cancel and List work before
// Start (jobs then wait in the store); Start runs them.
type Service struct {
	opts       Options
	log        *slog.Logger
	sem        chan struct{}
	wake       chan struct{}
	ownsStore  bool
	closeOnce  sync.Once
	targetPage int

	mu      sync.Mutex
	ctx     context.Context // Start's; nil before Start
	stop    context.CancelFunc
	pending map[string]*pendingJob
	running map[string]*run
	wg      sync.WaitGroup
}

type pendingJob struct {
	start     time.Time
	scheduled bool // the store says scheduled (or running, to resume)
}

// run is a job being executed; its statistics are live while the store's
// are updated only at the start and the end.
type run struct {
	cancel context.CancelCauseFunc
	done   chan struct{}

	mu    sync.Mutex
	stats Statistics
}

func (r *run) move(from, to DeviceStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	count(&r.stats, from, -1)
	count(&r.stats, to, 1)
}

func (r *run) snapshot() Statistics {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func count(st *Statistics, s DeviceStatus, d int) {
	switch s {
	case DevicePending:
		st.PendingCount += d
	case DeviceRunning:
		st.RunningCount += d
	case DeviceCompleted:
		st.SucceededCount += d
	case DeviceFailed:
		st.FailedCount += d
	}
}

func statsOf(djs []DeviceJob) Statistics {
	st := Statistics{DeviceCount: len(djs)}
	for _, dj := range djs {
		count(&st, dj.Status, 1)
	}
	return st
}

// Causes of a run's end other than finishing.
var (
	errCancelled = errors.New("job cancelled")
	errTimedOut  = errors.New("job exceeded maxExecutionTimeInSeconds")
)

// New returns a Service over opts.Store.
func New(opts Options) *Service {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &Service{
		opts:       opts,
		log:        log,
		sem:        make(chan struct{}, opts.Concurrency),
		wake:       make(chan struct{}, 1),
		pending:    map[string]*pendingJob{},
		running:    map[string]*run{},
		targetPage: 1000,
	}
}

// Open returns a Service whose jobs persist in dataDir/jobs.db; Close
// closes that store.
func Open(ctx context.Context, dataDir string, opts Options) (*Service, error) {
	st, err := OpenSQLite(ctx, filepath.Join(dataDir, "jobs.db"))
	if err != nil {
		return nil, err
	}
	opts.Store = st
	s := New(opts)
	s.ownsStore = true
	return s, nil
}

func (s *Service) now() time.Time { return s.opts.Now().UTC() }

// Start loads the jobs that are not over and runs the scheduler until ctx
// ends or Close. Jobs that were running when the hub stopped resume.
func (s *Service) Start(ctx context.Context) error {
	list, err := s.opts.Store.ListJobs(ctx)
	if err != nil {
		return fmt.Errorf("start jobs: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx != nil {
		return errors.New("jobs: Start called twice")
	}
	s.ctx, s.stop = context.WithCancel(ctx)
	for _, j := range list {
		if j.Status.Terminal() {
			continue
		}
		s.pending[j.JobID] = &pendingJob{start: j.StartTime, scheduled: j.Status != StatusQueued}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.loop()
	}()
	return nil
}

// Close stops the scheduler and the runners and waits for them. Jobs that
// were running stay "running" in the store and resume at the next Start.
func (s *Service) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		if s.stop != nil {
			s.stop()
		}
		s.mu.Unlock()
		s.wg.Wait()
		if s.ownsStore {
			err = s.opts.Store.Close()
		}
	})
	return err
}

func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// maxWait bounds one scheduler sleep, so that a jump of the wall clock is
// noticed within it.
const maxWait = time.Minute

func (s *Service) loop() {
	for {
		now := s.now()
		var mark []string
		next := now.Add(maxWait)
		s.mu.Lock()
		for id, p := range s.pending {
			if !p.start.After(now) {
				delete(s.pending, id)
				s.startRun(id)
				continue
			}
			if !p.scheduled {
				p.scheduled = true
				mark = append(mark, id)
			}
			if p.start.Before(next) {
				next = p.start
			}
		}
		ctx := s.ctx
		s.mu.Unlock()
		for _, id := range mark {
			_, err := s.opts.Store.UpdateJob(ctx, id, func(j *Job) error {
				if j.Status == StatusQueued {
					j.Status = StatusScheduled
				}
				return nil
			})
			if err != nil && ctx.Err() == nil {
				s.log.Warn("marking job scheduled", "job", id, "err", err)
			}
		}
		t := time.NewTimer(next.Sub(s.now()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// startRun starts a runner for job id; s.mu is held.
func (s *Service) startRun(id string) {
	rctx, cancel := context.WithCancelCause(s.ctx)
	r := &run{cancel: cancel, done: make(chan struct{})}
	s.running[id] = r
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(r.done)
		defer cancel(nil)
		s.execute(rctx, id, r)
		s.mu.Lock()
		delete(s.running, id)
		s.mu.Unlock()
	}()
}

// Create stores a new job (from ParseRequest) and schedules it. A taken id is
// 409 JobAlreadyExists.
func (s *Service) Create(ctx context.Context, j Job) (Job, error) {
	if err := s.opts.Store.CreateJob(ctx, j); err != nil {
		if errors.Is(err, ErrExists) {
			return Job{}, errcode.New(JobAlreadyExists, "a job with id %q already exists", j.JobID)
		}
		return Job{}, fmt.Errorf("create job: %w", err)
	}
	s.mu.Lock()
	if s.ctx != nil {
		s.pending[j.JobID] = &pendingJob{start: j.StartTime}
	}
	s.mu.Unlock()
	s.poke()
	return j, nil
}

func notFound(id string) error {
	return errcode.New(errcode.JobNotFound, "job %q does not exist", id)
}

func (s *Service) get(ctx context.Context, id string) (Job, error) {
	j, err := s.opts.Store.GetJob(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Job{}, notFound(id)
	}
	return j, err
}

// overlay replaces a running job's statistics with the live ones.
func (s *Service) overlay(j *Job) {
	if j.Status != StatusRunning {
		return
	}
	s.mu.Lock()
	r := s.running[j.JobID]
	s.mu.Unlock()
	if r != nil {
		j.DeviceJobStatistics = r.snapshot()
	}
}

// Get returns a job, or 404 JobNotFound.
func (s *Service) Get(ctx context.Context, id string) (Job, error) {
	j, err := s.get(ctx, id)
	if err != nil {
		return Job{}, err
	}
	s.overlay(&j)
	return j, nil
}

// Cancel cancels a job that is not over and returns it; a running job is
// stopped first (devices being worked on are abandoned, the rest are not
// started). A job that is over is returned unchanged.
func (s *Service) Cancel(ctx context.Context, id string) (Job, error) {
	j, err := s.get(ctx, id)
	if err != nil || j.Status.Terminal() {
		return j, err
	}
	s.mu.Lock()
	if r, ok := s.running[id]; ok {
		s.mu.Unlock()
		r.cancel(errCancelled)
		select {
		case <-r.done:
		case <-ctx.Done():
			return Job{}, ctx.Err()
		}
		return s.Get(ctx, id)
	}
	delete(s.pending, id)
	s.mu.Unlock()
	j, err = s.opts.Store.UpdateJob(ctx, id, func(j *Job) error {
		if !j.Status.Terminal() {
			end := s.now()
			j.Status, j.EndTime = StatusCancelled, &end
		}
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return Job{}, notFound(id)
	}
	return j, err
}

// List returns one page of jobs, oldest first, filtered by type and status
// when given (case-insensitively), as GET /jobs/v2/query. next is "" on the
// last page.
func (s *Service) List(ctx context.Context, jobType, status string, pageSize int, continuation string) (page []Job, next string, err error) {
	offset, err := decodeContinuation(continuation)
	if err != nil {
		return nil, "", err
	}
	all, err := s.opts.Store.ListJobs(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("list jobs: %w", err)
	}
	var sel []Job
	for _, j := range all {
		if jobType != "" && !strings.EqualFold(string(j.Type), jobType) {
			continue
		}
		if status != "" && !strings.EqualFold(string(j.Status), status) {
			continue
		}
		sel = append(sel, j)
	}
	page, next = paginate(sel, offset, pageSize)
	for i := range page {
		s.overlay(&page[i])
	}
	return page, next, nil
}

// QueryDeviceJobs runs a query over the per-device results (SELECT … FROM
// devices.jobs [WHERE …]) and returns one page of rows.
func (s *Service) QueryDeviceJobs(ctx context.Context, q string, pageSize int, continuation string) (items []any, next string, err error) {
	offset, err := decodeContinuation(continuation)
	if err != nil {
		return nil, "", err
	}
	sel, err := query.ParseSelect(q)
	if err != nil {
		return nil, "", errcode.New(errcode.ArgumentInvalid, "invalid query: %s", err.Error())
	}
	if !strings.EqualFold(sel.From(), "devices.jobs") {
		return nil, "", errcode.New(errcode.ArgumentInvalid, "QueryDeviceJobs queries devices.jobs, not %q", sel.From())
	}
	djs, err := s.opts.Store.DeviceJobs(ctx, "")
	if err != nil {
		return nil, "", err
	}
	docs := make([]map[string]any, 0, len(djs))
	for _, dj := range djs {
		b, err := json.Marshal(dj)
		if err != nil {
			return nil, "", fmt.Errorf("encode device job: %w", err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, "", fmt.Errorf("decode device job: %w", err)
		}
		docs = append(docs, m)
	}
	rows, err := sel.Execute(docs)
	if err != nil {
		return nil, "", errcode.New(errcode.ArgumentInvalid, "query failed: %s", err.Error())
	}
	items, next = paginate(rows, offset, pageSize)
	if items == nil {
		items = []any{}
	}
	return items, next, nil
}

func paginate[T any](all []T, offset, pageSize int) ([]T, string) {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	pageSize = min(pageSize, MaxPageSize)
	offset = min(offset, len(all))
	end := min(offset+pageSize, len(all))
	page := all[offset:end:end]
	if end < len(all) {
		return page, base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(end)))
	}
	return page, ""
}

func decodeContinuation(c string) (int, error) {
	if c == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		if n, err := strconv.Atoi(string(b)); err == nil && n >= 0 {
			return n, nil
		}
	}
	return 0, errcode.New(errcode.ArgumentInvalid, "invalid continuation token")
}
