package configurations

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/twin"
)

// Registry is what configurations need of the device registry
// (*registry.Registry).
type Registry interface {
	Query(ctx context.Context, q string, pageSize int, continuation string) (items []any, next string, err error)
	GetTwin(ctx context.Context, deviceID, moduleID string) (twin.Twin, error)
	PatchTwin(ctx context.Context, deviceID, moduleID string, patch []byte, ifMatch string) (twin.Twin, error)
	GetDevice(ctx context.Context, id string) (registry.Device, error)
	GetModule(ctx context.Context, deviceID, moduleID string) (registry.Module, error)
}

// Options wires a Service.
type Options struct {
	Store    Store
	Registry Registry
	// Period is how often the applier runs besides after each change; <= 0
	// means DefaultApplyPeriod.
	Period time.Duration
	// Now is the clock for recorded times; nil means time.Now.
	Now func() time.Time
	Log *slog.Logger
}

// Service keeps configurations and applies them.
type Service struct {
	opts      Options
	log       *slog.Logger
	wake      chan struct{}
	ownsStore bool
	closeOnce sync.Once
	pageSize  int

	mu     sync.Mutex
	stop   context.CancelFunc
	system map[string]map[string]int64 // latest system metric results by id
	wg     sync.WaitGroup

	// passMu serialises applier passes (the loop's and Reconcile's).
	passMu sync.Mutex
}

// New returns a Service over opts.Store.
func New(opts Options) *Service {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Period <= 0 {
		opts.Period = DefaultApplyPeriod
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &Service{opts: opts, log: log, wake: make(chan struct{}, 1), system: map[string]map[string]int64{}, pageSize: 1000}
}

// Open returns a Service whose configurations persist in
// dataDir/configurations.db; Close closes that store.
func Open(ctx context.Context, dataDir string, opts Options) (*Service, error) {
	st, err := OpenSQLite(ctx, filepath.Join(dataDir, "configurations.db"))
	if err != nil {
		return nil, err
	}
	opts.Store = st
	s := New(opts)
	s.ownsStore = true
	return s, nil
}

func (s *Service) now() time.Time { return s.opts.Now().UTC() }

// Start runs the applier until ctx ends or Close: a pass at once, then every
// Period and after every change.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		return errors.New("configurations: Start called twice")
	}
	ctx, s.stop = context.WithCancel(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.loop(ctx)
	}()
	return nil
}

// Close stops the applier and waits for it.
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

func (s *Service) loop(ctx context.Context) {
	t := time.NewTicker(s.opts.Period)
	defer t.Stop()
	for {
		if err := s.Reconcile(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("applying configurations", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
		}
	}
}

func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// compiled is a configuration ready to apply.
type compiled struct {
	c      Configuration
	target target
	ops    []op // deviceContent; nil when it has none
}

// Reconcile runs one applier pass: for every device twin, the
// highest-priority configuration with deviceContent whose targetCondition
// matches (the newest on a tie) is applied to its desired properties, and the
// system metrics are recounted.
func (s *Service) Reconcile(ctx context.Context) error {
	s.passMu.Lock()
	defer s.passMu.Unlock()
	list, err := s.opts.Store.List(ctx)
	if err != nil {
		return fmt.Errorf("list configurations: %w", err)
	}
	cs := make([]compiled, 0, len(list))
	for _, c := range list {
		t, err := compileTarget(c.TargetCondition)
		if err != nil {
			s.log.Warn("configuration has a bad targetCondition", "configuration", c.ID, "err", err)
			continue
		}
		ops, err := desiredOps("deviceContent", c.Content.DeviceContent, false)
		if err != nil {
			s.log.Warn("configuration has bad deviceContent", "configuration", c.ID, "err", err)
			continue
		}
		cs = append(cs, compiled{c: c, target: t, ops: ops})
	}
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i].c, cs[j].c
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if !a.CreatedTimeUtc.Equal(b.CreatedTimeUtc) {
			return a.CreatedTimeUtc.After(b.CreatedTimeUtc)
		}
		return a.ID < b.ID
	})
	targeted := map[string]int64{}
	applied := map[string]int64{}
	if len(cs) > 0 {
		err = s.eachTwin(ctx, func(doc map[string]any) {
			var winner *compiled
			for i := range cs {
				if !cs[i].target.match(doc) {
					continue
				}
				targeted[cs[i].c.ID]++
				if winner == nil && len(cs[i].ops) > 0 {
					winner = &cs[i]
				}
			}
			if winner != nil && s.applyToTwin(ctx, doc, winner) {
				applied[winner.c.ID]++
			}
		})
		if err != nil {
			return err
		}
	}
	system := make(map[string]map[string]int64, len(cs))
	for _, c := range cs {
		system[c.c.ID] = map[string]int64{MetricTargeted: targeted[c.c.ID], MetricApplied: applied[c.c.ID]}
	}
	s.mu.Lock()
	s.system = system
	s.mu.Unlock()
	return nil
}

// eachTwin calls fn with every device twin, as plain JSON.
func (s *Service) eachTwin(ctx context.Context, fn func(map[string]any)) error {
	cont := ""
	for {
		items, next, err := s.opts.Registry.Query(ctx, "SELECT * FROM devices", s.pageSize, cont)
		if err != nil {
			return fmt.Errorf("read twins: %w", err)
		}
		for _, it := range items {
			if doc, ok := it.(map[string]any); ok {
				fn(doc)
			}
		}
		if next == "" {
			return nil
		}
		cont = next
	}
}

// applyToTwin brings one twin's desired properties to the winner's content
// and reports whether they now hold it. A twin changed since it was read is
// left for the next pass.
func (s *Service) applyToTwin(ctx context.Context, doc map[string]any, w *compiled) bool {
	id, _ := doc["deviceId"].(string)
	etag, _ := doc["etag"].(string)
	var desired map[string]any
	if props, ok := doc["properties"].(map[string]any); ok {
		desired, _ = props["desired"].(map[string]any)
	}
	p := desiredPatch(desired, w.ops)
	if p == nil {
		return true
	}
	body, err := patchBody(p)
	if err != nil {
		s.log.Error("encoding a configuration patch", "configuration", w.c.ID, "device", id, "err", err)
		return false
	}
	ifMatch := "*"
	if etag != "" {
		ifMatch = `"` + etag + `"`
	}
	if _, err := s.opts.Registry.PatchTwin(ctx, id, "", body, ifMatch); err != nil {
		if !errcode.Is(err, errcode.PreconditionFailed) && !errcode.Is(err, errcode.DeviceNotFound) && ctx.Err() == nil {
			s.log.Warn("applying a configuration", "configuration", w.c.ID, "device", id, "err", err)
		}
		return false
	}
	s.log.Debug("configuration applied", "configuration", w.c.ID, "device", id)
	return true
}

func notFound(id string) error {
	return errcode.New(ConfigurationNotFound, "configuration %q does not exist", id)
}

func preconditionFailed() error {
	return errcode.New(errcode.PreconditionFailed, "the etag in If-Match does not match the current etag")
}

// etag versions: IoT Hub's configuration etags are the base64 of a counter.
func etagFor(version int64) string {
	return base64.StdEncoding.EncodeToString([]byte(strconv.FormatInt(version, 10)))
}

func versionOf(etag string) int64 {
	b, err := base64.StdEncoding.DecodeString(etag)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(string(b), 10, 64)
	return n
}

func matchETag(ifMatch, cur string) bool {
	v := strings.TrimSpace(ifMatch)
	v = strings.TrimPrefix(v, "W/")
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return v == "" || v == "*" || v == cur
}

// Create stores a new configuration (from ParseConfiguration); a taken id is
// 409.
func (s *Service) Create(ctx context.Context, c Configuration) (Configuration, error) {
	now := s.now()
	c.CreatedTimeUtc, c.LastUpdatedTimeUtc = now, now
	c.ETag = etagFor(1)
	if err := s.opts.Store.Create(ctx, c); err != nil {
		if errors.Is(err, ErrExists) {
			return Configuration{}, errcode.New(ConfigurationAlreadyExists, "a configuration with id %q already exists", c.ID)
		}
		return Configuration{}, fmt.Errorf("create configuration: %w", err)
	}
	s.poke()
	return s.render(ctx, c, false), nil
}

// Update replaces a configuration's targetCondition, priority, labels and
// metrics under an If-Match precondition. Content cannot change, as in IoT
// Hub: that takes a new configuration.
func (s *Service) Update(ctx context.Context, c Configuration, ifMatch string) (Configuration, error) {
	out, err := s.opts.Store.Update(ctx, c.ID, func(cur *Configuration) error {
		if !matchETag(ifMatch, cur.ETag) {
			return preconditionFailed()
		}
		if !sameContent(cur.Content, c.Content) {
			return errcode.New(errcode.ArgumentInvalid, "the content of configuration %q cannot be changed; create a new configuration", c.ID)
		}
		cur.SchemaVersion = c.SchemaVersion
		cur.Labels = c.Labels
		cur.ContentType = c.ContentType
		cur.TargetCondition = c.TargetCondition
		cur.Priority = c.Priority
		cur.Metrics.Queries = c.Metrics.Queries
		cur.LastUpdatedTimeUtc = s.now()
		cur.ETag = etagFor(versionOf(cur.ETag) + 1)
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return Configuration{}, notFound(c.ID)
	}
	if err != nil {
		return Configuration{}, err
	}
	s.poke()
	return s.render(ctx, out, false), nil
}

// Get returns a configuration with its metrics.
func (s *Service) Get(ctx context.Context, id string) (Configuration, error) {
	c, err := s.opts.Store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Configuration{}, notFound(id)
	}
	if err != nil {
		return Configuration{}, err
	}
	return s.render(ctx, c, true), nil
}

// List returns up to top configurations (top <= 0: DefaultListTop), by id.
func (s *Service) List(ctx context.Context, top int) ([]Configuration, error) {
	if top <= 0 {
		top = DefaultListTop
	}
	list, err := s.opts.Store.List(ctx)
	if err != nil {
		return nil, err
	}
	if len(list) > top {
		list = list[:top]
	}
	out := make([]Configuration, len(list))
	for i, c := range list {
		out[i] = s.render(ctx, c, true)
	}
	return out, nil
}

// Delete removes a configuration; what it applied stays in the twins, as in
// IoT Hub.
func (s *Service) Delete(ctx context.Context, id, ifMatch string) error {
	err := s.opts.Store.Delete(ctx, id, func(cur *Configuration) error {
		if !matchETag(ifMatch, cur.ETag) {
			return preconditionFailed()
		}
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return notFound(id)
	}
	if err != nil {
		return err
	}
	s.poke()
	return nil
}

// render fills in the metrics: system results from the latest applier pass,
// custom results counted now when withCustom.
func (s *Service) render(ctx context.Context, c Configuration, withCustom bool) Configuration {
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	s.mu.Lock()
	sys := s.system[c.ID]
	s.mu.Unlock()
	c.SystemMetrics = Metrics{
		Results: map[string]int64{MetricTargeted: sys[MetricTargeted], MetricApplied: sys[MetricApplied]},
		Queries: map[string]string{MetricTargeted: targetQuery(c.TargetCondition), MetricApplied: targetQuery(c.TargetCondition)},
	}
	queries := c.Metrics.Queries
	if queries == nil {
		queries = map[string]string{}
	}
	c.Metrics = Metrics{Results: map[string]int64{}, Queries: queries}
	if withCustom {
		for name, q := range queries {
			n, err := s.count(ctx, q)
			if err != nil {
				s.log.Debug("configuration metric failed", "configuration", c.ID, "metric", name, "err", err)
				continue
			}
			c.Metrics.Results[name] = n
		}
	}
	return c
}

func targetQuery(cond string) string {
	switch strings.TrimSpace(cond) {
	case "":
		return ""
	case "*":
		return "select deviceId from devices"
	}
	return "select deviceId from devices where " + cond
}

// count runs a metric query and counts its rows.
func (s *Service) count(ctx context.Context, q string) (int64, error) {
	var n int64
	cont := ""
	for {
		items, next, err := s.opts.Registry.Query(ctx, q, s.pageSize, cont)
		if err != nil {
			return 0, err
		}
		n += int64(len(items))
		if next == "" {
			return n, nil
		}
		cont = next
	}
}

// ApplyContent applies content to one device at once
// (applyConfigurationContent): deviceContent to the device twin's desired
// properties; modulesContent to the named module twins of an IoT Edge device,
// all of which must exist.
func (s *Service) ApplyContent(ctx context.Context, deviceID string, content Content) error {
	d, err := s.opts.Registry.GetDevice(ctx, deviceID)
	if err != nil {
		return err
	}
	if len(content.ModuleContent) > 0 {
		return errcode.New(errcode.ArgumentInvalid, "moduleContent is applied by module configurations, not to a device")
	}
	if len(content.DeviceContent) > 0 {
		ops, err := desiredOps("deviceContent", content.DeviceContent, false)
		if err != nil {
			return err
		}
		return s.applyOps(ctx, deviceID, "", ops)
	}
	mods, err := moduleOps(content.ModulesContent)
	if err != nil {
		return err
	}
	if !d.Capabilities.IotEdge {
		return errcode.New(errcode.ArgumentInvalid, "device %q is not an IoT Edge device: modulesContent cannot be applied to it", deviceID)
	}
	ids := make([]string, 0, len(mods))
	for mid := range mods {
		if _, err := s.opts.Registry.GetModule(ctx, deviceID, mid); err != nil {
			return err
		}
		ids = append(ids, mid)
	}
	sort.Strings(ids)
	for _, mid := range ids {
		if err := s.applyOps(ctx, deviceID, mid, mods[mid]); err != nil {
			return err
		}
	}
	return nil
}

// applyOps patches one twin's desired properties, retrying when the twin
// changes between the read and the write.
func (s *Service) applyOps(ctx context.Context, deviceID, moduleID string, ops []op) error {
	const attempts = 5
	for i := 0; ; i++ {
		t, err := s.opts.Registry.GetTwin(ctx, deviceID, moduleID)
		if err != nil {
			return err
		}
		desired, err := plain(t.Properties.Desired)
		if err != nil {
			return fmt.Errorf("read desired properties of %s: %w", deviceID, err)
		}
		p := desiredPatch(desired, ops)
		if p == nil {
			return nil
		}
		body, err := patchBody(p)
		if err != nil {
			return fmt.Errorf("encode configuration patch: %w", err)
		}
		_, err = s.opts.Registry.PatchTwin(ctx, deviceID, moduleID, body, `"`+t.ETag+`"`)
		if err == nil || !errcode.Is(err, errcode.PreconditionFailed) || i+1 == attempts {
			return err
		}
	}
}
