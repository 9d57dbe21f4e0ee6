package registry

import (
	"context"
	"errors"
	"time"
)

// Store is the persistence seam under Registry. It keeps one record per
// identity — a device (ModuleID "") or a module of a device — with the identity
// and the twin as opaque JSON documents. It knows no IoT Hub rule: ids, etags,
// versions and limits are Registry's business. Implementations must be safe for
// concurrent use.
type Store interface {
	// Get returns the record for key, or an error wrapping ErrNotFound.
	Get(ctx context.Context, key Key) (*Record, error)

	// Create inserts rec. It fails with ErrExists if rec.Key is taken, and with
	// ErrNotFound if rec is a module whose device does not exist.
	Create(ctx context.Context, rec *Record) error

	// Update reads the record for key and calls fn with it inside a
	// transaction; if fn returns nil, the Status, Identity and Twin it leaves
	// in *cur are written back atomically (Conn is not: see SetConnection).
	// An error from fn aborts the update and is returned unchanged; a missing
	// record is ErrNotFound without calling fn. fn may be called more than once
	// if the store retries a conflicting transaction, so it must not have side
	// effects beyond *cur, and it must not call the Store.
	Update(ctx context.Context, key Key, fn func(cur *Record) error) error

	// Delete removes the record for key — for a device, with all its modules —
	// after fn (if not nil) approves the current record inside the same
	// transaction. It returns the keys removed, the device's own key first.
	// A missing record is ErrNotFound; fn's error is returned unchanged.
	Delete(ctx context.Context, key Key, fn func(cur *Record) error) ([]Key, error)

	// SetConnection records an identity's connection state. It runs on every
	// connect and disconnect, so it is a single write with no read of the
	// documents. A missing record is ErrNotFound.
	SetConnection(ctx context.Context, key Key, c Connection) error

	// DisconnectAll marks every identity disconnected at t. A starting hub
	// calls it: after a crash no connection of the previous run survives.
	DisconnectAll(ctx context.Context, t time.Time) error

	// Scan calls fn for each record that f selects, in key order. fn must not
	// call the Store; an error from fn stops the scan and is returned.
	Scan(ctx context.Context, f ScanFilter, fn func(rec *Record) error) error

	// CountDevices counts devices by their Record.Status.
	CountDevices(ctx context.Context) (map[string]int, error)
}

// Errors a Store reports (wrapped with context).
var (
	ErrNotFound = errors.New("registry store: not found")
	ErrExists   = errors.New("registry store: already exists")
)

// Key names an identity: a device when ModuleID is "", else a module.
type Key struct {
	DeviceID string
	ModuleID string
}

// Record is what a Store keeps for one identity.
type Record struct {
	Key Key
	// Status is the device's status ("enabled"/"disabled"), kept outside the
	// identity document so that CountDevices need not decode it. "" for modules.
	Status string
	// Identity is the JSON of the Device or Module.
	Identity []byte
	// Twin is the JSON of the twin.Document.
	Twin []byte
	// Conn is the connection state, written by Create and SetConnection only.
	Conn Connection
}

// Connection is an identity's volatile connection state. Zero times mean never.
type Connection struct {
	Connected    bool
	UpdatedAt    time.Time
	LastActivity time.Time
}

// ScanFilter selects records for Scan.
type ScanFilter struct {
	// Modules selects modules instead of devices.
	Modules bool
	// DeviceID, with Modules, selects only that device's modules.
	DeviceID string
	// Limit caps the number of records; <= 0 means no limit.
	Limit int
}
