package chattest

import (
	"os"
	"testing"

	"chat/internal/chat"
	"chat/internal/config"

	"github.com/alicebob/miniredis/v2"
)

// RedisAddr is the Redis that tests use: the server named by
// CHAT_TEST_REDIS, else an embedded miniredis for this test. With
// CHAT_TEST_REQUIRE=1 (CI) a missing CHAT_TEST_REDIS fails the test.
func RedisAddr(t testing.TB) string {
	t.Helper()
	if addr := os.Getenv("CHAT_TEST_REDIS"); addr != "" {
		return addr
	}
	if Required() {
		t.Fatal("CHAT_TEST_REQUIRE=1 but CHAT_TEST_REDIS is not set")
	}
	m := miniredis.RunT(t)
	return m.Addr()
}

// Required reports whether skips for missing parts (Redis, Chromium) are
// failures (CI sets CHAT_TEST_REQUIRE=1).
func Required() bool { return os.Getenv("CHAT_TEST_REQUIRE") == "1" }

// WithRedis points a config at Redis under a key prefix unique to the test,
// so tests sharing one Redis do not see each other.
func WithRedis(addr, prefix string) func(*config.Config) {
	return func(c *config.Config) {
		c.Redis.Addr = addr
		c.Redis.Prefix = prefix
	}
}

// UniquePrefix is a Redis key prefix no other test run uses.
func UniquePrefix() string { return "chattest-" + chat.NewNodeID() }
