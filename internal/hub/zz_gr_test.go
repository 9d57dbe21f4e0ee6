package hub_test

import (
	"os"
	"runtime/pprof"
	"testing"
	"time"
)

func TestZZGoroutines(t *testing.T) {
	d := newDevice(t, "gr")
	c := dialRaw(t)
	c.write(connectPacket(4, d.DeviceID, username(d.DeviceID), deviceToken(t, d, time.Hour), true))
	c.expect(2, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	pprof.Lookup("goroutine").WriteTo(os.Stdout, 2)
}
