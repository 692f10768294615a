//go:build !race

package server

// Without -race there is nothing to tell (sock_race.go).

func raceReadDone(uintptr)   {}
func raceWriteStart(uintptr) {}
