package mqttframe

import (
	"bufio"
	"io"
	"testing"
)

// loopConn serves a CONNECT, then the same block of packets forever, in
// socket-sized reads that cut packets anywhere.
type loopConn struct {
	chunkConn
	head, block []byte
	pos         int
}

func (c *loopConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	n := 0
	for n < len(p) && n < 16*1024 {
		k := copy(p[n:], c.block[c.pos:])
		c.pos = (c.pos + k) % len(c.block)
		n += k
	}
	return n, nil
}

// BenchmarkGuardPublish measures small QoS 1 telemetry PUBLISH packets (a
// typical IoT Hub topic and a 64-byte body) read through the guard by a
// bufio.Reader the size mochi uses, one packet per op.
func BenchmarkGuardPublish(b *testing.B) {
	for _, level := range []byte{4, 5} {
		name := "v3.1.1"
		var pub []byte
		if level == 5 {
			name = "v5"
			pub = frame(0x32, str("devices/device-0001/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8"), u16(1), props(), make([]byte, 64))
		} else {
			pub = frame(0x32, str("devices/device-0001/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8"), u16(1), make([]byte, 64))
		}
		b.Run(name, func(b *testing.B) {
			var block []byte
			for range 97 { // odd count: reads cut packets at varying offsets
				block = append(block, pub...)
			}
			g := Guard(&loopConn{head: connect(level), block: block}, Options{})
			br := bufio.NewReaderSize(g, 2048)
			if _, err := io.ReadFull(br, make([]byte, len(connect(level)))); err != nil {
				b.Fatal(err)
			}
			pkt := make([]byte, len(pub))
			b.SetBytes(int64(len(pub)))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := io.ReadFull(br, pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
