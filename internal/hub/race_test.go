//go:build race

package hub_test

// raceEnabled: the race detector doubles the runtime's stack guard and widens
// frames, so a parked goroutine's stack stays one size larger.
const raceEnabled = true
