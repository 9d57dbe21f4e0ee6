package msglog

// AsyncAppender is implemented by logs that can take an append without a
// goroutine waiting for it. An MQTT connection is read by one goroutine, so a
// synchronous Append lets a device have only one message in the group commit
// at a time; with AppendAsync the reader goes on to the device's next
// PUBLISH and sends each PUBACK from done, and a device's whole window of
// publishes can share one fsync.
type AsyncAppender interface {
	// AppendAsync queues data and calls done exactly once, with the offset
	// once the record is durable or with an error. Appends issued from one
	// goroutine get increasing offsets, and their done calls come in the same
	// order. done may run on an internal goroutine and must not block. As
	// with Append, the log may keep data: the caller must not change it.
	AppendAsync(data []byte, done func(offset uint64, err error))
}
