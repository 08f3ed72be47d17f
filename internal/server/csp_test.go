package server

import (
	"strings"
	"testing"
)

// A Host header is written into the policy only when it is a plain
// host[:port]: one carrying ';' or spaces cannot add directives.
func TestContentSecurityPolicyTakesOnlyAPlainHost(t *testing.T) {
	for _, tc := range []struct {
		host, connect string
	}{
		{"localhost:8888", "connect-src 'self' ws://localhost:8888 wss://localhost:8888;"},
		{"chat.example.com", "connect-src 'self' ws://chat.example.com wss://chat.example.com;"},
		{"[::1]:8888", "connect-src 'self' ws://[::1]:8888 wss://[::1]:8888;"},
		{"a;script-src *", "connect-src 'self';"},
		{"a b", "connect-src 'self';"},
		{"", "connect-src 'self';"},
	} {
		csp := contentSecurityPolicy(tc.host)
		if !strings.Contains(csp, tc.connect) || strings.Count(csp, "script-src") != 0 {
			t.Errorf("host %q: policy %q, want %q", tc.host, csp, tc.connect)
		}
	}
}
