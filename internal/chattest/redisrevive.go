package chattest

import "testing"

// Revive starts the killed server at addr again, empty, on its port, as a
// supervisor restarts a crashed Redis: the sentinels then make it a
// replica of the new master, which it syncs from. Until then a master
// whose sends need a replica's confirmation (MinReplicaAcks) has none.
func (s *Sentinel) Revive(t testing.TB, addr string) {
	t.Helper()
	p, ok := s.procs[addr]
	if !ok {
		t.Fatalf("%s is none of this setup's servers", addr)
	}
	p.Restart(t)
}
