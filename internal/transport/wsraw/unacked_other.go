//go:build !linux

package wsraw

import "syscall"

// unacked cannot tell outside Linux: a closing socket is closed as usual.
func unacked(syscall.RawConn) (int, bool) { return 0, false }
