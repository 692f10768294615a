//go:build !race

package protocol

// Without -race there is nothing to tell (rawio_race.go).

func raceReadDone(uintptr)   {}
func raceWriteStart(uintptr) {}
