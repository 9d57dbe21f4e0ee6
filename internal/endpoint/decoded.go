package endpoint

import (
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/msglog"
)

// DecodedRecords shares decoded log records between the workers that read one
// log. Every endpoint's worker reads every record to see whether it is routed
// there; at small batches decoding was a tenth of the hub's CPU, once per
// endpoint. The workers read close to each other, so a small ring keyed by
// offset lets the first one decode and the others reuse.
//
// The messages it hands out are shared: nothing may change their maps or body
// in place (selection copies before it enriches).
type DecodedRecords struct {
	ring *msglog.Ring[decoded]
}

type decoded struct {
	m   message.Message
	err error
}

// decodedSlots is the ring's size; with decodedMaxBytes it bounds what the
// ring keeps alive (a record's body stays referenced until its slot is reused).
const (
	decodedSlots    = 2048
	decodedMaxBytes = 8 << 10
)

// NewDecodedRecords returns an empty ring for one log. Offsets must never be
// reused within it, which the log guarantees.
func NewDecodedRecords() *DecodedRecords {
	return &DecodedRecords{ring: msglog.NewRing[decoded](decodedSlots)}
}

// decode returns r's message, decoding it unless another worker already did.
// A nil ring decodes every time.
func (c *DecodedRecords) decode(r msglog.Record) (message.Message, error) {
	if c == nil || len(r.Data) > decodedMaxBytes {
		return msglog.DecodeMessage(r.Data)
	}
	if d, ok := c.ring.Get(r.Offset); ok {
		return d.m, d.err
	}
	m, err := msglog.DecodeMessage(r.Data)
	c.ring.Put(r.Offset, decoded{m: m, err: err})
	return m, err
}
