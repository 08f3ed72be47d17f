package main

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"chat/internal/config"

	"github.com/zeromicro/go-zero/core/conf"
)

func TestShippedConfigHasTheSpecDefaults(t *testing.T) {
	var c config.Config
	conf.MustLoad("etc/chat-api.yaml", &c)
	ch := c.Chat
	if c.Port != 8888 || ch.MaxFrameBytes != 32768 || ch.MaxText != 2000 || ch.MaxRooms != 32 ||
		ch.RateLimit != 20 || ch.RateBurst != 40 || ch.MaxQueueBytes != 1<<20 || ch.MaxConnections != 100000 ||
		ch.PingInterval != 25*time.Second || ch.PongTimeout != 60*time.Second ||
		ch.HistorySize != 200 || ch.HistoryTTL != 24*time.Hour || ch.PresenceTTL != 60*time.Second ||
		ch.DrainTimeout != 10*time.Second || len(ch.AllowedOrigins) != 0 || ch.ApiKey != "" ||
		ch.CoalesceWindow != 50*time.Millisecond || ch.MaxUserConnections != 64 || ch.HistoryMaxBytes != 64<<20 ||
		ch.ReadHeaderTimeout != 10*time.Second || ch.IdleTimeout != 120*time.Second || ch.SendBufferBytes != 64<<10 ||
		ch.PresenceEventLimit != 500 || ch.PresenceInterval != time.Second ||
		c.Redis.Addr != "" || c.Redis.Prefix != "chat" || c.Redis.DB != 0 || c.Auth.AccessSecret != "" {
		t.Fatalf("defaults differ from SPEC §5: %+v %+v %+v", c.Chat, c.Redis, c.Auth)
	}
	// go-zero kills the process at WaitTime: the drain must fit before it.
	if c.Shutdown.WaitTime <= c.Shutdown.WrapUpTime+ch.DrainTimeout+time.Second {
		t.Fatalf("Shutdown.WaitTime %v is too short for DrainTimeout %v", c.Shutdown.WaitTime, ch.DrainTimeout)
	}
}

// go-zero caches environment lookups per process, so the override is
// checked in a child process that starts with the variables set.
func TestEnvironmentOverridesTheConfigFile(t *testing.T) {
	if os.Getenv("CHAT_ENV_CHILD") == "1" {
		var c config.Config
		conf.MustLoad("etc/chat-api.yaml", &c)
		if err := applyPortEnv(&c); err != nil {
			t.Fatal(err)
		}
		if c.Redis.Addr != "redis:6379" || c.Chat.ApiKey != "k" || c.Auth.AccessSecret != "s" || c.Port != 9999 {
			t.Fatalf("env not applied: %+v %q %+v port %d", c.Redis, c.Chat.ApiKey, c.Auth, c.Port)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEnvironmentOverridesTheConfigFile$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CHAT_ENV_CHILD=1", "CHAT_REDIS_ADDR=redis:6379", "CHAT_API_KEY=k",
		"CHAT_ACCESS_SECRET=s", "CHAT_PORT=9999")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

func TestBadPortEnvIsRefused(t *testing.T) {
	t.Setenv("CHAT_PORT", "nope")
	var c config.Config
	if err := applyPortEnv(&c); err == nil {
		t.Fatal("a bad CHAT_PORT was accepted")
	}
}
