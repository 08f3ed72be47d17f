package wsraw

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// unacked reports how many bytes written to the socket the peer has not
// acknowledged yet (SIOCOUTQ), and whether it could tell.
func unacked(raw syscall.RawConn) (int, bool) {
	if raw == nil {
		return 0, false
	}
	var n int
	var err error
	if cerr := raw.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); cerr != nil || err != nil {
		return 0, false
	}
	return n, true
}
