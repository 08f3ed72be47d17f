package model

import (
	"context"
	"fmt"
	"strings"

	"github.com/zeromicro/go-zero/core/stores/sqlx"
)

var _ MessageModel = (*customMessageModel)(nil)

type (
	// MessageModel is an interface to be customized, add more methods here,
	// and implement the added methods in customMessageModel.
	MessageModel interface {
		messageModel
		// WithSession is the model working inside a transaction.
		WithSession(session sqlx.Session) MessageModel
		// InsertIgnoringStored inserts rows; a row whose (room, epoch, seq) is
		// already stored is skipped, any other failure is an error.
		InsertIgnoringStored(ctx context.Context, rows []*Message) error
		// StoredSeqs returns which of seqs are stored for a room's epoch.
		StoredSeqs(ctx context.Context, room, epoch string, seqs []int64) ([]int64, error)
		// FindNewest returns a room's messages of epoch with after < seq <
		// before (0: no bound on that side), the newest limit of them, newest
		// first.
		FindNewest(ctx context.Context, room, epoch string, after, before int64, limit int) ([]*Message, error)
		// FindSeqs lists the stored seqs of a room's epoch in (after, upTo], ascending.
		FindSeqs(ctx context.Context, room, epoch string, after, upTo int64) ([]int64, error)
		// DeleteBefore deletes at most limit messages with ts < before and
		// reports how many it deleted.
		DeleteBefore(ctx context.Context, before int64, limit int) (int64, error)
	}

	customMessageModel struct {
		*defaultMessageModel
		dialect Dialect
	}
)

// NewMessageModel returns a model for the database table.
func NewMessageModel(conn sqlx.SqlConn, dialect Dialect) MessageModel {
	return &customMessageModel{
		defaultMessageModel: newMessageModel(conn),
		dialect:             dialect,
	}
}

func (m *customMessageModel) WithSession(session sqlx.Session) MessageModel {
	return NewMessageModel(sqlx.NewSqlConnFromSession(session), m.dialect)
}

func (m *customMessageModel) InsertIgnoringStored(ctx context.Context, rows []*Message) error {
	// Not MySQL's INSERT IGNORE: it also turns "data too long" and other
	// errors into warnings and stores the row mangled. The no-op update
	// ignores the unique key's duplicates only.
	onDuplicate := " on duplicate key update `id` = `id`"
	if m.dialect == SQLite {
		onDuplicate = " on conflict (`room`, `epoch`, `seq`) do nothing"
	}
	for len(rows) > 0 {
		n := min(len(rows), maxRowsPerStatement)
		values := make([]string, n)
		args := make([]any, 0, n*7)
		for i, r := range rows[:n] {
			values[i] = "(" + placeholders(7) + ")"
			args = append(args, r.Room, r.Epoch, r.Seq, r.MsgId, r.Sender, r.Text, r.Ts)
		}
		query := fmt.Sprintf("insert into %s (%s) values %s%s", m.table, messageRowsExpectAutoSet,
			strings.Join(values, ", "), onDuplicate)
		if _, err := m.conn.ExecCtx(ctx, query, args...); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

func (m *customMessageModel) StoredSeqs(ctx context.Context, room, epoch string, seqs []int64) ([]int64, error) {
	var stored []int64
	for len(seqs) > 0 {
		n := min(len(seqs), maxRowsPerStatement)
		query := fmt.Sprintf("select `seq` from %s where `room` = ? and `epoch` = ? and `seq` in (%s)",
			m.table, placeholders(n))
		var found []int64
		args := append([]any{room, epoch}, int64Args(seqs[:n])...)
		if err := m.conn.QueryRowsCtx(ctx, &found, query, args...); err != nil {
			return nil, err
		}
		stored = append(stored, found...)
		seqs = seqs[n:]
	}
	return stored, nil
}

func (m *customMessageModel) FindNewest(ctx context.Context, room, epoch string, after, before int64, limit int) ([]*Message, error) {
	where := "`room` = ? and `epoch` = ?"
	args := []any{room, epoch}
	if after > 0 {
		where += " and `seq` > ?"
		args = append(args, after)
	}
	if before > 0 {
		where += " and `seq` < ?"
		args = append(args, before)
	}
	query := fmt.Sprintf("select %s from %s where %s order by `seq` desc limit ?", messageRows, m.table, where)
	var rows []*Message
	err := m.conn.QueryRowsCtx(ctx, &rows, query, append(args, limit)...)
	return rows, err
}

func (m *customMessageModel) FindSeqs(ctx context.Context, room, epoch string, after, upTo int64) ([]int64, error) {
	query := fmt.Sprintf("select `seq` from %s where `room` = ? and `epoch` = ? and `seq` > ? and `seq` <= ? order by `seq`", m.table)
	var seqs []int64
	err := m.conn.QueryRowsCtx(ctx, &seqs, query, room, epoch, after, upTo)
	return seqs, err
}

func (m *customMessageModel) DeleteBefore(ctx context.Context, before int64, limit int) (int64, error) {
	// MySQL has DELETE ... LIMIT but no LIMIT in an IN subquery; SQLite
	// (as built by modernc) has the subquery but not DELETE ... LIMIT.
	query := fmt.Sprintf("delete from %s where `ts` < ? limit ?", m.table)
	if m.dialect == SQLite {
		query = fmt.Sprintf("delete from %[1]s where `id` in (select `id` from %[1]s where `ts` < ? limit ?)", m.table)
	}
	res, err := m.conn.ExecCtx(ctx, query, before, limit)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
