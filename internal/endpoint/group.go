package endpoint

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// Group runs a changing set of workers, one per endpoint name, so that
// endpoints can be created, replaced and deleted while the hub runs. Workers
// added before Start begin with it; later ones begin when added.
type Group struct {
	log *slog.Logger

	mu      sync.Mutex
	ctx     context.Context // set by Start; nil before
	order   []string
	running map[string]*member
	wg      sync.WaitGroup
}

type member struct {
	w      *Worker
	cancel context.CancelFunc
	done   chan struct{}
}

// NewGroup returns an empty group.
func NewGroup(log *slog.Logger) *Group {
	if log == nil {
		log = slog.Default()
	}
	return &Group{log: log, running: map[string]*member{}}
}

// Start runs every worker added so far, and any added later, until ctx ends.
// Wait waits for them.
func (g *Group) Start(ctx context.Context) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ctx = ctx
	for _, name := range g.order {
		g.launch(g.running[name])
	}
}

// Wait returns when every worker has stopped (after Start's context ended).
func (g *Group) Wait() { g.wg.Wait() }

// Add adds a worker; it runs at once if the group has started. A worker of
// the same name must have been removed first.
func (g *Group) Add(w *Worker) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	name := w.cfg.Name
	if _, dup := g.running[name]; dup {
		return fmt.Errorf("endpoint %s already has a worker", name)
	}
	m := &member{w: w}
	g.running[name] = m
	g.order = append(g.order, name)
	if g.ctx != nil {
		g.launch(m)
	}
	return nil
}

// launch runs m's worker; g.mu is held.
func (g *Group) launch(m *member) {
	ctx, cancel := context.WithCancel(g.ctx)
	m.cancel, m.done = cancel, make(chan struct{})
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer close(m.done)
		if err := m.w.Run(ctx); err != nil {
			g.log.Error("endpoint worker stopped", "endpoint", m.w.cfg.Name, "error", err)
		}
	}()
}

// Remove stops the named worker and waits until it has stopped (or ctx
// ends), so that its sink can be closed and its cursor is no longer moved.
// It returns the worker, or nil if there is none of that name.
func (g *Group) Remove(ctx context.Context, name string) (*Worker, error) {
	g.mu.Lock()
	m, ok := g.running[name]
	if ok {
		delete(g.running, name)
		for i, n := range g.order {
			if n == name {
				g.order = append(g.order[:i:i], g.order[i+1:]...)
				break
			}
		}
	}
	g.mu.Unlock()
	if !ok {
		return nil, nil
	}
	if m.cancel == nil { // never started
		return m.w, nil
	}
	m.cancel()
	select {
	case <-m.done:
		return m.w, nil
	case <-ctx.Done():
		return m.w, fmt.Errorf("endpoint %s: waiting for its worker to stop: %w", name, ctx.Err())
	}
}

// Workers returns the current workers in the order they were added.
func (g *Group) Workers() []*Worker {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*Worker, 0, len(g.order))
	for _, n := range g.order {
		out = append(out, g.running[n].w)
	}
	return out
}

// Sink returns the worker's sink.
func (w *Worker) Sink() Sink { return w.cfg.Sink }

// Name returns the endpoint's name.
func (w *Worker) Name() string { return w.cfg.Name }
