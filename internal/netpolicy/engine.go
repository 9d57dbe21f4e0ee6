package netpolicy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// Options configure an Engine.
type Options struct {
	// AllowLoopback admits connections whose local and remote addresses are
	// both loopback ("local administration"), whatever the policy says.
	AllowLoopback bool
	// Save, when set, persists a policy before it takes effect; an error
	// leaves the old policy in force.
	Save func(Policy) error
}

// Engine holds the policy in force. Decide is lock-free (the compiled policy
// sits in an atomic pointer, read once per connection); changes are
// serialised, saved, swapped in and then announced to subscribers.
type Engine struct {
	opts Options
	cur  atomic.Pointer[state]

	mu     sync.Mutex // serialises changes
	subMu  sync.Mutex
	subs   map[int]func()
	nextID int
}

type state struct {
	policy  Policy
	decider *Decider
}

// NewEngine compiles p and returns an engine holding it. p is not saved.
func NewEngine(p Policy, opts Options) (*Engine, error) {
	d, err := p.compile(opts.AllowLoopback)
	if err != nil {
		return nil, err
	}
	e := &Engine{opts: opts, subs: map[int]func(){}}
	e.cur.Store(&state{policy: p.Clone(), decider: d})
	return e, nil
}

// Decide decides one connection under the policy in force.
func (e *Engine) Decide(listener string, local, remote netip.AddrPort) Decision {
	return e.cur.Load().decider.Decide(listener, local, remote)
}

// Decider returns the compiled policy in force.
func (e *Engine) Decider() *Decider { return e.cur.Load().decider }

// Policy returns a copy of the policy in force.
func (e *Engine) Policy() Policy { return e.cur.Load().policy.Clone() }

// MinTLSVersion is the policy's lowest TLS version (a crypto/tls constant).
func (e *Engine) MinTLSVersion() uint16 { return e.cur.Load().decider.minTLSVersion }

// Update replaces the policy. An invalid policy returns the validation error
// (field paths) and changes nothing.
func (e *Engine) Update(p Policy) error {
	return e.Modify(func(cur *Policy) error {
		*cur = p.Clone()
		return nil
	})
}

// Modify applies f to a copy of the policy in force and installs the result,
// atomically with respect to other changes (read-modify-write without lost
// updates). If f or validation fails nothing changes.
func (e *Engine) Modify(f func(*Policy) error) error {
	e.mu.Lock()
	p := e.cur.Load().policy.Clone()
	if err := f(&p); err != nil {
		e.mu.Unlock()
		return err
	}
	d, err := p.compile(e.opts.AllowLoopback)
	if err != nil {
		e.mu.Unlock()
		return err
	}
	if e.opts.Save != nil {
		if err := e.opts.Save(p); err != nil {
			e.mu.Unlock()
			return fmt.Errorf("save network policy: %w", err)
		}
	}
	e.cur.Store(&state{policy: p.Clone(), decider: d})
	e.mu.Unlock()
	e.notify()
	return nil
}

// Subscribe calls f after every change, on the changing goroutine, once the
// new policy is in force. f must not call Modify or Update. cancel removes f.
func (e *Engine) Subscribe(f func()) (cancel func()) {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	id := e.nextID
	e.nextID++
	e.subs[id] = f
	return func() {
		e.subMu.Lock()
		defer e.subMu.Unlock()
		delete(e.subs, id)
	}
}

func (e *Engine) notify() {
	e.subMu.Lock()
	fs := make([]func(), 0, len(e.subs))
	for _, f := range e.subs {
		fs = append(fs, f)
	}
	e.subMu.Unlock()
	for _, f := range fs {
		f()
	}
}

// LoadFile reads a policy saved by SaveFile. A missing file is reported with
// an error satisfying errors.Is(err, os.ErrNotExist).
func LoadFile(path string) (Policy, error) {
	var p Policy
	b, err := os.ReadFile(path)
	if err != nil {
		return p, fmt.Errorf("read network policy: %w", err)
	}
	if err := decodeStrict(b, &p); err != nil {
		return p, fmt.Errorf("network policy %s: %w", path, err)
	}
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("network policy %s: %w", path, err)
	}
	return p, nil
}

// SaveFile writes p atomically (temporary file, fsync, rename) with mode 0600.
func SaveFile(path string, p Policy) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("encode network policy: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".network-*.json")
	if err != nil {
		return fmt.Errorf("save network policy: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err = tmp.Write(append(b, '\n')); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o600)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("save network policy: %w", err)
	}
	return nil
}

// DecodeJSON decodes a policy document strictly (unknown fields are errors).
func DecodeJSON(b []byte) (Policy, error) {
	var p Policy
	err := decodeStrict(b, &p)
	return p, err
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return errors.New("decode: trailing data after the JSON document")
	}
	return nil
}
