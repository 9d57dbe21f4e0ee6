package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/methods"
)

// finalWrite bounds the writes that record a job's end, which must happen even
// when the run's own context is cancelled.
const finalWrite = 10 * time.Second

// execute runs job id to its end. It returns early, leaving the job running
// in the store, only when the Service closes.
func (s *Service) execute(ctx context.Context, id string, r *run) {
	// Store writes outlive a cancel: its results must still be recorded.
	wctx := context.WithoutCancel(ctx)
	finished := false
	defer func() {
		if !finished && !s.closing() && errors.Is(context.Cause(ctx), errCancelled) {
			s.cancelRest(id, r)
		}
	}()
	j, err := s.opts.Store.GetJob(wctx, id)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("job vanished before it ran", "job", id, "err", err)
		}
		return
	}
	if j.Status.Terminal() {
		return
	}
	resume := j.Status == StatusRunning
	deadline := j.StartTime
	if j.CreatedTime.After(deadline) {
		deadline = j.CreatedTime
	}
	deadline = deadline.Add(time.Duration(j.MaxExecutionTimeInSeconds) * time.Second)

	var djs []DeviceJob
	if resume {
		if djs, err = s.opts.Store.DeviceJobs(wctx, id); err != nil {
			s.abandon(ctx, id, err)
			return
		}
	}
	if !resume || len(djs) == 0 {
		ids, err := s.targets(ctx, j.QueryCondition)
		if err != nil {
			if s.closing() {
				return
			}
			if errors.Is(context.Cause(ctx), errCancelled) {
				return
			}
			finished = true
			s.finish(id, StatusFailed, "the query condition could not be evaluated: "+errcode.From(err).Message, statsOf(nil))
			return
		}
		now := s.now()
		djs = make([]DeviceJob, len(ids))
		for i, d := range ids {
			djs[i] = DeviceJob{DeviceID: d, JobID: id, JobType: j.Type, Status: DevicePending,
				StartTimeUtc: now, CreatedDateTimeUtc: now, LastUpdatedDateTimeUtc: now}
		}
		if err := s.opts.Store.PutDeviceJobs(wctx, djs); err != nil {
			s.abandon(ctx, id, err)
			return
		}
	}
	// Devices a stopped hub was working on start again.
	for i := range djs {
		if djs[i].Status == DeviceRunning {
			djs[i].Status = DevicePending
		}
	}
	r.mu.Lock()
	r.stats = statsOf(djs)
	stats := r.stats
	r.mu.Unlock()
	j, err = s.opts.Store.UpdateJob(wctx, id, func(j *Job) error {
		if j.Status.Terminal() {
			return errCancelled
		}
		j.Status, j.DeviceJobStatistics = StatusRunning, stats
		return nil
	})
	if err != nil {
		if errors.Is(err, errCancelled) {
			finished = true
		} else {
			s.abandon(ctx, id, err)
		}
		return
	}

	dctx, stop := context.WithDeadlineCause(ctx, deadline, errTimedOut)
	defer stop()
	var wg sync.WaitGroup
	var mu sync.Mutex
	results := map[string]DeviceJob{}
loop:
	for _, dj := range djs {
		if dj.Status.terminal() {
			continue
		}
		select {
		case s.sem <- struct{}{}:
		case <-dctx.Done():
			break loop
		}
		if dctx.Err() != nil {
			<-s.sem
			break
		}
		r.move(DevicePending, DeviceRunning)
		wg.Add(1)
		go func(dj DeviceJob) {
			defer wg.Done()
			defer func() { <-s.sem }()
			out, ok := s.runDevice(dctx, j, dj)
			if !ok {
				r.move(DeviceRunning, DevicePending)
				return
			}
			if err := s.opts.Store.PutDeviceJobs(wctx, []DeviceJob{out}); err != nil && !s.closing() {
				s.log.Error("recording a device's job result", "job", id, "device", dj.DeviceID, "err", err)
			}
			r.move(DeviceRunning, out.Status)
			mu.Lock()
			results[dj.DeviceID] = out
			mu.Unlock()
		}(dj)
	}
	wg.Wait()
	if s.closing() {
		return
	}

	status, reason, devStatus := StatusCompleted, "", DeviceFailed
	switch cause := context.Cause(dctx); {
	case errors.Is(cause, errCancelled):
		status, devStatus = StatusCancelled, DeviceCanceled
	case errors.Is(cause, errTimedOut):
		status, reason = StatusFailed, "the job did not finish within maxExecutionTimeInSeconds"
	}
	now := s.now()
	var rest []DeviceJob
	for _, dj := range djs {
		if dj.Status.terminal() {
			continue
		}
		if _, done := results[dj.DeviceID]; done {
			continue
		}
		dj.Status, dj.EndTimeUtc, dj.LastUpdatedDateTimeUtc = devStatus, &now, now
		if devStatus == DeviceFailed {
			dj.Error = &DeviceJobError{Code: "JobTimeout", Description: reason}
		}
		r.move(DevicePending, devStatus)
		rest = append(rest, dj)
	}
	fctx, cancel := context.WithTimeout(wctx, finalWrite)
	defer cancel()
	if err := s.opts.Store.PutDeviceJobs(fctx, rest); err != nil {
		s.log.Error("recording the devices a job did not reach", "job", id, "err", err)
	}
	finished = true
	s.finish(id, status, reason, r.snapshot())
}

// cancelRest ends a job cancelled before its devices were started: those
// recorded so far are marked canceled.
func (s *Service) cancelRest(id string, r *run) {
	ctx, cancel := context.WithTimeout(context.Background(), finalWrite)
	defer cancel()
	djs, err := s.opts.Store.DeviceJobs(ctx, id)
	if err != nil {
		s.log.Error("reading a cancelled job's devices", "job", id, "err", err)
	}
	now := s.now()
	var rest []DeviceJob
	for _, dj := range djs {
		if !dj.Status.terminal() {
			dj.Status, dj.EndTimeUtc, dj.LastUpdatedDateTimeUtc = DeviceCanceled, &now, now
			rest = append(rest, dj)
		}
	}
	if err := s.opts.Store.PutDeviceJobs(ctx, rest); err != nil {
		s.log.Error("recording a cancelled job's devices", "job", id, "err", err)
	}
	s.finish(id, StatusCancelled, "", statsOf(djs))
}

// closing reports whether the Service is shutting down.
func (s *Service) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ctx != nil && s.ctx.Err() != nil
}

// abandon logs a store failure that stops a run; the job stays as it is and
// runs again at the next Start.
func (s *Service) abandon(ctx context.Context, id string, err error) {
	if ctx.Err() == nil {
		s.log.Error("job run stopped by a store failure; it resumes at the next start", "job", id, "err", err)
	}
}

// finish records a job's end.
func (s *Service) finish(id string, status Status, reason string, stats Statistics) {
	ctx, cancel := context.WithTimeout(context.Background(), finalWrite)
	defer cancel()
	_, err := s.opts.Store.UpdateJob(ctx, id, func(j *Job) error {
		end := s.now()
		j.Status, j.EndTime, j.FailureReason, j.DeviceJobStatistics = status, &end, reason, stats
		return nil
	})
	if err != nil {
		s.log.Error("recording a job's end", "job", id, "status", status, "err", err)
		return
	}
	s.log.Info("job finished", "job", id, "status", status, "devices", stats.DeviceCount,
		"succeeded", stats.SucceededCount, "failed", stats.FailedCount)
}

// targets lists the ids of the devices that cond selects.
func (s *Service) targets(ctx context.Context, cond string) ([]string, error) {
	q := "SELECT deviceId FROM devices WHERE " + cond
	var ids []string
	cont := ""
	for {
		items, next, err := s.opts.Registry.Query(ctx, q, s.targetPage, cont)
		if err != nil {
			return nil, fmt.Errorf("select the job's devices: %w", err)
		}
		for _, it := range items {
			if m, ok := it.(map[string]any); ok {
				if id, ok := m["deviceId"].(string); ok && id != "" {
					ids = append(ids, id)
				}
			}
		}
		if next == "" {
			return ids, nil
		}
		cont = next
	}
}

// runDevice does a job's work on one device. ok is false when the run was
// stopped by the Service closing, so nothing may be recorded.
func (s *Service) runDevice(ctx context.Context, j Job, dj DeviceJob) (out DeviceJob, ok bool) {
	out = dj
	out.StartTimeUtc = s.now()
	var err error
	switch j.Type {
	case TypeScheduleDeviceMethod:
		err = s.invoke(ctx, j, &out)
	case TypeScheduleUpdateTwin:
		_, err = s.opts.Registry.PatchTwin(ctx, dj.DeviceID, "", j.UpdateTwin, "*")
	default:
		err = errcode.New(errcode.InvalidOperation, "job type %q cannot run", j.Type)
	}
	if s.closing() {
		return dj, false
	}
	end := s.now()
	out.EndTimeUtc, out.LastUpdatedDateTimeUtc = &end, end
	switch cause := context.Cause(ctx); {
	case err == nil:
		out.Status = DeviceCompleted
	case ctx.Err() != nil && errors.Is(cause, errCancelled):
		out.Status = DeviceCanceled
	case ctx.Err() != nil && errors.Is(cause, errTimedOut):
		out.Status = DeviceFailed
		out.Error = &DeviceJobError{Code: "JobTimeout", Description: errTimedOut.Error()}
	default:
		e := errcode.From(err)
		out.Status = DeviceFailed
		out.Error = &DeviceJobError{Code: e.Code.Name, Description: e.Message}
	}
	return out, true
}

func (s *Service) invoke(ctx context.Context, j Job, out *DeviceJob) error {
	if s.opts.Methods == nil || j.CloudToDeviceMethod == nil {
		return errcode.New(errcode.ServiceUnavailable, "direct methods are not available")
	}
	m := j.CloudToDeviceMethod
	resp, conn := m.ResponseTimeoutInSeconds, m.ConnectTimeoutInSeconds
	res, err := s.opts.Methods.Invoke(ctx, out.DeviceID, "", methods.Request{
		MethodName:               m.MethodName,
		Payload:                  m.Payload,
		ResponseTimeoutInSeconds: &resp,
		ConnectTimeoutInSeconds:  &conn,
	})
	if err != nil {
		return err
	}
	out.Outcome = &Outcome{DeviceMethodResponse: &MethodResponse{Status: res.Status, Payload: res.Payload}}
	return nil
}
