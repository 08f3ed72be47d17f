package chattest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"chat/internal/store"

	"github.com/go-sql-driver/mysql"
)

// StoreDSN names a durable store (SPEC §14) for store.Open.
type StoreDSN struct {
	Driver string // "sqlite" or "mysql"
	DSN    string
}

// StoreDrivers are the drivers store tests run against, each as a subtest
// (see EachStore): SQLite always, MariaDB when CHAT_TEST_MYSQL is set.
func StoreDrivers() []string { return []string{store.DriverSQLite, store.DriverMySQL} }

// NewStoreDSN makes an empty database of driver for this test: a SQLite
// file in t.TempDir(), or a database chattest_<random> on the MariaDB
// server named by CHAT_TEST_MYSQL (a go-sql-driver DSN without database,
// root@tcp(127.0.0.1:3306)/), dropped when the test ends. Without
// CHAT_TEST_MYSQL the MariaDB variant skips; with CHAT_TEST_REQUIRE=1 (CI)
// it fails.
func NewStoreDSN(t testing.TB, driver string) StoreDSN {
	t.Helper()
	switch driver {
	case store.DriverSQLite:
		return StoreDSN{Driver: driver, DSN: filepath.Join(t.TempDir(), "chat.db")}
	case store.DriverMySQL:
		return StoreDSN{Driver: driver, DSN: newMySQLDatabase(t)}
	}
	t.Fatalf("unknown store driver %q", driver)
	return StoreDSN{}
}

// Stores is one empty store per driver this environment has: SQLite, and
// MariaDB when CHAT_TEST_MYSQL is set (a failure under CHAT_TEST_REQUIRE=1
// when it is not). Tests that want a visible skip use EachStore.
func Stores(t testing.TB) []StoreDSN {
	t.Helper()
	stores := []StoreDSN{NewStoreDSN(t, store.DriverSQLite)}
	if os.Getenv("CHAT_TEST_MYSQL") != "" || Required() {
		stores = append(stores, NewStoreDSN(t, store.DriverMySQL))
	}
	return stores
}

// EachStore runs f as a subtest named for each driver, on an empty store
// of that driver (NewStoreDSN: the MariaDB subtest skips, or fails under
// CHAT_TEST_REQUIRE=1, without CHAT_TEST_MYSQL).
func EachStore(t *testing.T, f func(t *testing.T, s StoreDSN)) {
	t.Helper()
	for _, driver := range StoreDrivers() {
		t.Run(driver, func(t *testing.T) {
			f(t, NewStoreDSN(t, driver))
		})
	}
}

// OpenStore opens an empty store of driver for this test and closes it
// when the test ends.
func OpenStore(t testing.TB, driver string) *store.Store {
	t.Helper()
	d := NewStoreDSN(t, driver)
	s, err := store.Open(d.Driver, d.DSN)
	if err != nil {
		t.Fatalf("open %s store: %v", driver, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newMySQLDatabase creates a database on CHAT_TEST_MYSQL's server, drops it
// when the test ends, and returns a DSN naming it.
func newMySQLDatabase(t testing.TB) string {
	t.Helper()
	server := os.Getenv("CHAT_TEST_MYSQL")
	if server == "" {
		if Required() {
			t.Fatal("CHAT_TEST_REQUIRE=1 but CHAT_TEST_MYSQL is not set")
		}
		t.Skip("CHAT_TEST_MYSQL is not set (a MariaDB DSN without database, e.g. root@tcp(127.0.0.1:3306)/)")
	}
	cfg, err := mysql.ParseDSN(server)
	if err != nil {
		t.Fatalf("CHAT_TEST_MYSQL=%q: %v", server, err)
	}
	if cfg.DBName != "" {
		t.Fatalf("CHAT_TEST_MYSQL=%q names a database; name the server only (…/)", server)
	}
	admin, err := sql.Open("mysql", server)
	if err != nil {
		t.Fatalf("CHAT_TEST_MYSQL=%q: %v", server, err)
	}
	defer admin.Close()

	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "chattest_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE `"+name+"` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"); err != nil {
		t.Fatalf("create database on CHAT_TEST_MYSQL=%q: %v", server, err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("mysql", server)
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+name+"`"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})

	cfg.DBName = name
	return cfg.FormatDSN()
}
