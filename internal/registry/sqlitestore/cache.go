package sqlitestore

import (
	"hash/maphash"
	"sync"

	"github.com/moat-iot/moat/internal/registry"
)

// recordCache keeps recently read records in memory. Reads of one identity
// (twin GETs, connects, routing's $twin lookups) far outnumber its writes, and
// a SQLite point read costs more than the rest of a twin GET together. It is
// sound only because this process is the database's one writer: every write
// goes through the Store and invalidates here. (A shared database, such as the
// clustered PostgreSQL store, cannot use it.)
//
// A read that misses fills the cache only if no write to its device started
// or finished while it read, so it never installs a value a concurrent write
// superseded: writes bump seq before they run and again after they commit,
// marking their device's fence bucket, and the reader compares its bucket's
// fence with seq as it was before the read. The compare-and-swap updates
// instead refresh the entry from the writer goroutine right after their
// commit (in commit order), marking the fence too.
type recordCache struct {
	mu   sync.Mutex
	seq  uint64 // counts writes
	hash maphash.Seed
	// fence holds, per bucket of device ids, the seq of the latest write to
	// one of them; cleared, that of the latest clear. One fence for all ids
	// made every connect's state change turn away every read in flight, so
	// in a connect storm the cache hardly filled and each connect read its
	// identity from SQLite twice.
	fence   [fenceBuckets]uint64
	cleared uint64
	max     int
	n       int
	devices map[string]map[string]*registry.Record // device id → module id ("" for the device) → record
}

// fenceBuckets is the number of fence buckets: reads that miss at once are
// few, so a collision (which only costs a fill) is rare.
const fenceBuckets = 1024

func newRecordCache(max int) *recordCache {
	return &recordCache{max: max, hash: maphash.MakeSeed(), devices: map[string]map[string]*registry.Record{}}
}

// fenceOf is deviceID's fence bucket.
func (c *recordCache) fenceOf(deviceID string) uint64 {
	return maphash.String(c.hash, deviceID) % fenceBuckets
}

// wrote records a write to deviceID's records (c.mu held).
func (c *recordCache) wrote(deviceID string) {
	c.seq++
	c.fence[c.fenceOf(deviceID)] = c.seq
}

// get returns a copy of the cached record, or the sequence number a miss
// must hand to put.
func (c *recordCache) get(k registry.Key) (*registry.Record, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rec, ok := c.devices[k.DeviceID][k.ModuleID]; ok {
		cp := *rec
		return &cp, 0
	}
	return nil, c.seq
}

// put caches rec, read when the sequence number was seq.
func (c *recordCache) put(rec *registry.Record, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max <= 0 || c.cleared > seq || c.fence[c.fenceOf(rec.Key.DeviceID)] > seq {
		return
	}
	if c.n >= c.max {
		c.evictOne()
	}
	mods := c.devices[rec.Key.DeviceID]
	if mods == nil {
		mods = map[string]*registry.Record{}
		c.devices[rec.Key.DeviceID] = mods
	}
	if _, ok := mods[rec.Key.ModuleID]; !ok {
		c.n++
	}
	cp := *rec
	mods[rec.Key.ModuleID] = &cp
}

// evictOne drops an arbitrary device's entries (map order is random enough
// for a bound, and keeps this O(1) amortised).
func (c *recordCache) evictOne() {
	for d, mods := range c.devices {
		c.n -= len(mods)
		delete(c.devices, d)
		return
	}
}

// invalidate forgets key — all of a device's entries, since deleting a
// device removes its modules — and fences off reads in flight.
func (c *recordCache) invalidate(k registry.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wrote(k.DeviceID)
	mods := c.devices[k.DeviceID]
	if k.ModuleID == "" {
		c.n -= len(mods)
		delete(c.devices, k.DeviceID)
		return
	}
	if _, ok := mods[k.ModuleID]; ok {
		c.n--
		delete(mods, k.ModuleID)
	}
}

// refresh replaces a cached record's status, identity and twin with
// committed values, keeping its connection state (which the caller did not
// write and may hold stale). An absent entry stays absent: without one there
// is no connection state known to be current. It runs on the writer's
// goroutine after the commit, so refreshes apply in commit order.
func (c *recordCache) refresh(rec *registry.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wrote(rec.Key.DeviceID)
	cur, ok := c.devices[rec.Key.DeviceID][rec.Key.ModuleID]
	if !ok {
		return
	}
	cp := *rec
	cp.Conn = cur.Conn
	c.devices[rec.Key.DeviceID][rec.Key.ModuleID] = &cp
}

// setConn sets a cached record's connection state (the writer of
// connection states keeps it current here, in the order of its calls). An
// absent entry stays absent; a read that misses takes the state from the
// connection writer.
func (c *recordCache) setConn(k registry.Key, conn registry.Connection) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wrote(k.DeviceID)
	if cur, ok := c.devices[k.DeviceID][k.ModuleID]; ok {
		cp := *cur
		cp.Conn = conn
		c.devices[k.DeviceID][k.ModuleID] = &cp
	}
}

// clear forgets everything (for writes to many identities at once).
func (c *recordCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.cleared = c.seq
	c.devices = map[string]map[string]*registry.Record{}
	c.n = 0
}
