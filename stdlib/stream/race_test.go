//go:build race

package stream

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// heap figures measured under it include garbage a normal build never makes.
const raceEnabled = true
