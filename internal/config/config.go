// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package config

import (
	"time"

	"github.com/zeromicro/go-zero/rest"
)

// Config mirrors etc/chat-api.yaml. The keys are part of the contract
// (SPEC §5); env tags let a container be configured by environment alone.
type Config struct {
	rest.RestConf
	Chat  ChatConf
	Redis RedisConf
	Auth  AuthConf
	Store StoreConf
}

// ChatConf holds the chat's limits and timings.
type ChatConf struct {
	// MaxFrameBytes fits the longest valid send in any JSON encoding:
	// MaxText characters escaped as \uXXXX surrogate pairs, 12 bytes each.
	MaxFrameBytes      int           `json:",default=32768"`
	MaxText            int           `json:",default=2000"`
	MaxRooms           int           `json:",default=32"`
	RateLimit          float64       `json:",default=20"`
	RateBurst          int           `json:",default=40"`
	MaxQueueBytes      int           `json:",default=1048576"`
	SendBufferBytes    int           `json:",default=65536"` // the socket's send buffer (SO_SNDBUF); 0: the kernel's
	MaxConnections     int           `json:",default=100000"`
	MaxUserConnections int           `json:",default=64"` // one user's connections on this replica
	PingInterval       time.Duration `json:",default=25s"`
	PongTimeout        time.Duration `json:",default=60s"`
	ReadHeaderTimeout  time.Duration `json:",default=10s"`  // an HTTP request's headers must arrive within it
	IdleTimeout        time.Duration `json:",default=120s"` // an idle keep-alive HTTP connection is closed after it
	HistorySize        int           `json:",default=200"`
	HistoryTTL         time.Duration `json:",default=24h"`
	HistoryMaxBytes    int64         `json:",default=67108864"` // all rooms' history in the in-memory broker
	PresenceTTL        time.Duration `json:",default=60s"`
	// Above PresenceEventLimit members a room sends periodic "presence"
	// diffs (at most one per PresenceInterval) instead of joined/left.
	PresenceEventLimit int           `json:",default=500"`
	PresenceInterval   time.Duration `json:",default=1s"`
	DrainTimeout       time.Duration `json:",default=10s"`
	CoalesceWindow     time.Duration `json:",default=50ms"` // least time between two writes to a busy connection
	AllowedOrigins     []string      `json:",optional"`
	// PublicRooms are the rooms anyone may enter (path.Match patterns);
	// any other room needs a pattern in the token's rooms claim or a
	// grant of the admin API (SPEC §13). [] makes every room private.
	PublicRooms []string `json:",default=[*]"`
	ApiKey      string   `json:",optional,env=CHAT_API_KEY"`
}

// RedisConf selects the broker: in single mode an empty Addr runs one node
// in memory. Sentinel mode finds the master through SentinelAddrs by
// MasterName; cluster mode starts from Addrs (SPEC §15).
type RedisConf struct {
	Mode          string   `json:",default=single,options=single|sentinel|cluster,env=CHAT_REDIS_MODE"`
	Addr          string   `json:",optional,env=CHAT_REDIS_ADDR"`
	MasterName    string   `json:",optional"`
	SentinelAddrs []string `json:",optional"`
	Addrs         []string `json:",optional"`
	Password      string   `json:",optional"`
	DB            int      `json:",default=0"`
	Prefix        string   `json:",default=chat"`
	// MinReplicaAcks: in sentinel and cluster modes a send is acknowledged
	// once this many replicas hold it (WAIT); 0 trades that for
	// availability, and a failover may then lose acknowledged messages.
	MinReplicaAcks int `json:",default=1"`
}

// InMemory reports whether the config runs one node on the in-memory
// broker: single mode without an address.
func (r RedisConf) InMemory() bool {
	return (r.Mode == "" || r.Mode == "single") && r.Addr == ""
}

// StoreConf selects the durable store of room messages and offline direct
// messages (SPEC §14): none (""), "sqlite" (a file, for one node) or
// "mysql" (MySQL or MariaDB, for a cluster).
type StoreConf struct {
	Driver string `json:",optional,env=CHAT_STORE_DRIVER"`
	// DSN is the SQLite file (default chat.db) or a go-sql-driver/mysql
	// DSN (user:password@tcp(host:3306)/database).
	DSN string `json:",optional,env=CHAT_STORE_DSN"`
	// Retention deletes messages older than it; 0 keeps them forever.
	Retention time.Duration `json:",optional"`
}

// AuthConf turns on token auth on /ws when AccessSecret is set.
type AuthConf struct {
	AccessSecret string `json:",optional,env=CHAT_ACCESS_SECRET"`
}
