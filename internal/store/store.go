// Package store is the durable SQL store of SPEC §14: every room's messages,
// each room's head (the epoch and seq it last stored, which outlives Redis),
// and the direct messages kept for users who were offline.
//
// Two drivers, both pure Go: "sqlite" (modernc.org/sqlite, a file, for one
// node) and "mysql" (go-sql-driver, MySQL or MariaDB, shared by a cluster).
// The tables are schema/mysql.sql, the source of the goctl models in
// store/model, and schema/sqlite.sql, the same tables in SQLite's syntax; Open
// creates what is missing. Where the dialects differ the models pick the SQL.
//
// A Store is safe for concurrent use, also by several replicas sharing one
// MySQL database: a message is stored once per (room, epoch, seq) whoever
// writes it, and a stored direct message is taken by one caller only.
package store

import (
	"cmp"
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"chat/internal/protocol"
	"chat/internal/store/model"

	"github.com/go-sql-driver/mysql"
	"github.com/zeromicro/go-zero/core/stores/sqlx"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Drivers Open accepts.
const (
	DriverSQLite = "sqlite"
	DriverMySQL  = "mysql"
)

var (
	//go:embed schema/mysql.sql
	mysqlSchema string
	//go:embed schema/sqlite.sql
	sqliteSchema string
)

const (
	// migrateTimeout bounds Open's connecting and creating of tables.
	migrateTimeout = time.Minute
	// sqliteBusyTimeout is how long a statement waits for another process
	// holding the SQLite file's write lock (this process has one connection).
	sqliteBusyTimeout = 10 * time.Second
	// mysqlDialTimeout bounds connecting when the DSN sets no timeout.
	mysqlDialTimeout = 10 * time.Second
	// deadlockRetries is how often a transaction MySQL chose as a deadlock
	// victim is run again (two replicas writing the same rows).
	deadlockRetries = 3
)

// Store is the durable store. Its methods wrap errors with what they did.
type Store struct {
	driver   string
	db       *sql.DB
	conn     sqlx.SqlConn
	rooms    model.RoomModel
	messages model.MessageModel
	directs  model.OfflineDirectModel
}

// Head is a room's sequence as the store last recorded it.
type Head struct {
	Epoch string
	Seq   int64
}

// Open opens and migrates the store: driver "sqlite" (dsn: a file path) or
// "mysql" (a go-sql-driver DSN naming a database).
//
// Open turns off go-zero's statement log for the process: it would write
// every message's text to the log at info level (and return-and-log every
// error, which the store's callers report themselves).
func Open(driver, dsn string) (*Store, error) {
	var (
		db      *sql.DB
		dialect model.Dialect
		schema  string
		err     error
	)
	switch driver {
	case DriverSQLite:
		db, err = openSQLite(dsn)
		dialect, schema = model.SQLite, sqliteSchema
	case DriverMySQL:
		db, err = openMySQL(dsn)
		dialect, schema = model.MySQL, mysqlSchema
	default:
		return nil, fmt.Errorf("open store: unknown driver %q (want %q or %q)", driver, DriverSQLite, DriverMySQL)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s store: %w", driver, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), migrateTimeout)
	defer cancel()
	for _, stmt := range statements(schema) {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			db.Close()
			return nil, fmt.Errorf("open %s store: create tables: %w", driver, err)
		}
	}

	sqlx.DisableLog()
	conn := sqlx.NewSqlConnFromDB(db)
	return &Store{
		driver:   driver,
		db:       db,
		conn:     conn,
		rooms:    model.NewRoomModel(conn, dialect),
		messages: model.NewMessageModel(conn, dialect),
		directs:  model.NewOfflineDirectModel(conn, dialect),
	}, nil
}

// openSQLite opens the file at path with one connection: SQLite has one
// writer at a time anyway, and one connection makes every transaction
// (TakeDirects' read-then-delete among them) run alone. WAL lets readers
// in other processes (backups, the sqlite3 shell) run beside it;
// synchronous=NORMAL in WAL mode survives a crash of the process, and what an
// OS crash could lose of the last commits Redis still holds.
func openSQLite(path string) (*sql.DB, error) {
	if path == "" {
		return nil, errors.New("empty DSN: name the database file")
	}
	params := fmt.Sprintf("_pragma=busy_timeout(%d)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate",
		sqliteBusyTimeout.Milliseconds())
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	db, err := sql.Open(DriverSQLite, path+sep+params)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0) // an in-memory database lives as long as its connection
	db.SetConnMaxIdleTime(0)
	return db, nil
}

// openMySQL opens a pool on dsn, which must name a database.
func openMySQL(dsn string) (*sql.DB, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	if cfg.DBName == "" {
		return nil, errors.New("the DSN names no database (user@tcp(host:3306)/chat)")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = mysqlDialTimeout
	}
	if _, set := cfg.Params["sql_mode"]; !set {
		// Strict, whatever the server's default: a value too long for its
		// column is an error, not a row stored cut short.
		if cfg.Params == nil {
			cfg.Params = map[string]string{}
		}
		cfg.Params["sql_mode"] = "CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')"
	}
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(connector)
	// go-zero's sqlx pool settings; the lifetime stays below MySQL's and
	// proxies' idle timeouts.
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	db.SetConnMaxLifetime(time.Minute)
	return db, nil
}

// statements splits a schema file into its statements: "--" comment lines
// dropped, split at the semicolons that end statements (the schema files
// put none elsewhere).
func statements(schema string) []string {
	var b strings.Builder
	for line := range strings.Lines(schema) {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		b.WriteString(line)
	}
	var stmts []string
	for stmt := range strings.SplitSeq(b.String(), ";") {
		if stmt = strings.TrimSpace(stmt); stmt != "" {
			stmts = append(stmts, stmt)
		}
	}
	return stmts
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close %s store: %w", s.driver, err)
	}
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping %s store: %w", s.driver, err)
	}
	return nil
}

// Driver is "sqlite" or "mysql".
func (s *Store) Driver() string { return s.driver }

// Append writes room messages (any rooms, any order, in one transaction). A
// message whose (room, epoch, seq) is already stored is skipped, so writing
// one twice is harmless and nothing is ever stored twice. It also moves each
// room's head forward: to the highest appended seq when the epoch is the
// head's, or to the appended message's epoch and seq when the epoch differs
// (a room whose sequence restarted). Skipped messages leave the head alone:
// they moved it when they were stored, and a late copy of an old epoch's
// message must not take the head back to that epoch.
func (s *Store) Append(ctx context.Context, msgs []protocol.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	err := s.transact(ctx, func(ctx context.Context, session sqlx.Session) error {
		return appendTx(ctx, s.messages.WithSession(session), s.rooms.WithSession(session), msgs)
	})
	if err != nil {
		return fmt.Errorf("append %d messages: %w", len(msgs), err)
	}
	return nil
}

type msgKey struct {
	room, epoch string
	seq         int64
}

type roomEpoch struct{ room, epoch string }

func appendTx(ctx context.Context, messages model.MessageModel, rooms model.RoomModel, msgs []protocol.Message) error {
	// Drop repeats within the batch, keeping the order of first sight (it
	// decides the head when a batch holds more than one epoch of a room).
	seen := make(map[msgKey]bool, len(msgs))
	var groups []roomEpoch
	seqs := make(map[roomEpoch][]int64)
	unique := make([]protocol.Message, 0, len(msgs))
	for _, m := range msgs {
		k := msgKey{m.Room, m.Epoch, m.Seq}
		if seen[k] {
			continue
		}
		seen[k] = true
		unique = append(unique, m)
		g := roomEpoch{m.Room, m.Epoch}
		if _, ok := seqs[g]; !ok {
			groups = append(groups, g)
		}
		seqs[g] = append(seqs[g], m.Seq)
	}

	// Which are stored already: they are skipped and do not move heads.
	stored := make(map[msgKey]bool)
	for _, g := range groups {
		found, err := messages.StoredSeqs(ctx, g.room, g.epoch, seqs[g])
		if err != nil {
			return fmt.Errorf("read stored seqs of %s: %w", g.room, err)
		}
		for _, seq := range found {
			stored[msgKey{g.room, g.epoch, seq}] = true
		}
	}
	fresh := slices.DeleteFunc(unique, func(m protocol.Message) bool {
		return stored[msgKey{m.Room, m.Epoch, m.Seq}]
	})
	if len(fresh) == 0 {
		return nil
	}

	// Rows and heads are written in one order (room, then epoch and seq)
	// whoever writes them, so that two replicas writing the same rooms take
	// MySQL's locks in the same order. The heads' order within a room stays
	// the batch's.
	rows := make([]*model.Message, len(fresh))
	for i, m := range fresh {
		rows[i] = &model.Message{Room: m.Room, Epoch: m.Epoch, Seq: m.Seq, MsgId: m.ID, Sender: m.From, Text: m.Text, Ts: m.TS}
	}
	slices.SortFunc(rows, func(a, b *model.Message) int {
		return cmpKeys(msgKey{a.Room, a.Epoch, a.Seq}, msgKey{b.Room, b.Epoch, b.Seq})
	})
	// Another replica may have stored some of them since the check above:
	// the insert skips those too.
	if err := messages.InsertIgnoringStored(ctx, rows); err != nil {
		return fmt.Errorf("insert: %w", err)
	}

	for _, h := range headMoves(fresh) {
		if err := rooms.AdvanceHead(ctx, h.room, h.epoch, h.seq); err != nil {
			return fmt.Errorf("move head of %s: %w", h.room, err)
		}
	}
	return nil
}

func cmpKeys(a, b msgKey) int {
	if c := strings.Compare(a.room, b.room); c != 0 {
		return c
	}
	if c := strings.Compare(a.epoch, b.epoch); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}

// headMoves reduces messages to the head updates that applying them one by
// one would make: per room, one per run of messages of one epoch, with the
// run's highest seq (AdvanceHead keeps the higher seq within an epoch and
// restarts on another). Sorted by room, each room's runs in batch order.
func headMoves(msgs []protocol.Message) []msgKey {
	var moves []msgKey
	last := make(map[string]int) // room -> index in moves of its current run
	for _, m := range msgs {
		if i, ok := last[m.Room]; ok && moves[i].epoch == m.Epoch {
			moves[i].seq = max(moves[i].seq, m.Seq)
			continue
		}
		last[m.Room] = len(moves)
		moves = append(moves, msgKey{m.Room, m.Epoch, m.Seq})
	}
	slices.SortStableFunc(moves, func(a, b msgKey) int { return strings.Compare(a.room, b.room) })
	return moves
}

// Head reads a room's head; ok is false when the store never held the room.
func (s *Store) Head(ctx context.Context, room string) (h Head, ok bool, err error) {
	r, err := s.rooms.FindOne(ctx, room)
	switch {
	case errors.Is(err, model.ErrNotFound):
		return Head{}, false, nil
	case err != nil:
		return Head{}, false, fmt.Errorf("read head of %s: %w", room, err)
	}
	return Head{Epoch: r.Epoch, Seq: r.Seq}, true, nil
}

// Messages reads a room's messages of epoch with after < seq < before (0: no
// bound on that side), the newest limit of them (limit > 0), oldest first.
// Non-nil slice.
func (s *Store) Messages(ctx context.Context, room, epoch string, after, before int64, limit int) ([]protocol.Message, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read messages of %s: limit %d, want > 0", room, limit)
	}
	rows, err := s.messages.FindNewest(ctx, room, epoch, after, before, limit)
	if err != nil {
		return nil, fmt.Errorf("read messages of %s (%d < seq < %d): %w", room, after, before, err)
	}
	out := make([]protocol.Message, len(rows))
	for i, r := range rows {
		out[len(rows)-1-i] = protocol.Message{
			Type: "message", Room: r.Room, Epoch: r.Epoch, Seq: r.Seq,
			ID: r.MsgId, From: r.Sender, Text: r.Text, TS: r.Ts,
		}
	}
	return out, nil
}

// Seqs lists the seqs stored of a room's epoch in (after, upTo], ascending.
// Non-nil slice.
func (s *Store) Seqs(ctx context.Context, room, epoch string, after, upTo int64) ([]int64, error) {
	seqs, err := s.messages.FindSeqs(ctx, room, epoch, after, upTo)
	if err != nil {
		return nil, fmt.Errorf("read seqs of %s in (%d, %d]: %w", room, after, upTo, err)
	}
	if seqs == nil {
		seqs = []int64{}
	}
	return seqs, nil
}

// DeleteBefore deletes room messages and offline direct messages with ts <
// before (unix ms), at most limit rows of each table per call, and reports
// how many rows it deleted in all (the caller repeats while it deletes
// limit). Room heads are kept (a room keeps its sequence after its messages
// expire).
func (s *Store) DeleteBefore(ctx context.Context, before int64, limit int) (int64, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("delete before %d: limit %d, want > 0", before, limit)
	}
	msgs, err := s.messages.DeleteBefore(ctx, before, limit)
	if err != nil {
		return 0, fmt.Errorf("delete messages before %d: %w", before, err)
	}
	directs, err := s.directs.DeleteBefore(ctx, before, limit)
	if err != nil {
		return msgs, fmt.Errorf("delete direct messages before %d: %w", before, err)
	}
	return msgs + directs, nil
}

// SaveDirect stores a direct message for d.To.
func (s *Store) SaveDirect(ctx context.Context, d protocol.Direct) error {
	_, err := s.directs.Insert(ctx, &model.OfflineDirect{
		Recipient: d.To, MsgId: d.ID, Sender: d.From, Text: d.Text, Ts: d.TS,
	})
	if err != nil {
		return fmt.Errorf("store direct message for %s: %w", d.To, err)
	}
	return nil
}

// TakeDirects removes and returns up to limit of user's stored direct
// messages, oldest first (by insertion), marked Offline. Of two calls at
// once for one user (two replicas sharing MariaDB), each message goes to
// exactly one: MySQL locks the rows read until they are deleted; SQLite runs
// one transaction at a time. Non-nil slice.
func (s *Store) TakeDirects(ctx context.Context, user string, limit int) ([]protocol.Direct, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("take direct messages of %s: limit %d, want > 0", user, limit)
	}
	var rows []*model.OfflineDirect
	err := s.transact(ctx, func(ctx context.Context, session sqlx.Session) error {
		directs := s.directs.WithSession(session)
		var err error
		rows, err = directs.FindOldestForUpdate(ctx, user, limit)
		if err != nil || len(rows) == 0 {
			return err
		}
		ids := make([]int64, len(rows))
		for i, r := range rows {
			ids[i] = r.Id
		}
		return directs.DeleteIDs(ctx, ids)
	})
	if err != nil {
		return nil, fmt.Errorf("take direct messages of %s: %w", user, err)
	}
	out := make([]protocol.Direct, len(rows))
	for i, r := range rows {
		out[i] = protocol.Direct{Type: "direct", ID: r.MsgId, From: r.Sender, To: r.Recipient, Text: r.Text, TS: r.Ts, Offline: true}
	}
	return out, nil
}

// transact runs fn in a transaction, again when MySQL rolled it back as a
// deadlock's victim. fn must use only the session: the SQLite pool has one
// connection, which the transaction holds.
func (s *Store) transact(ctx context.Context, fn func(context.Context, sqlx.Session) error) error {
	for attempt := 1; ; attempt++ {
		err := s.conn.TransactCtx(ctx, fn)
		if err == nil || attempt > deadlockRetries || !isDeadlock(err) || ctx.Err() != nil {
			return err
		}
	}
}

// isDeadlock reports MySQL's ER_LOCK_DEADLOCK, after which the transaction
// is rolled back and may simply be run again.
func isDeadlock(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number == 1213
	}
	// go-zero reports a failed rollback with the first error as text only.
	return strings.Contains(err.Error(), "Error 1213")
}
