package model

import (
	"context"
	"fmt"

	"github.com/zeromicro/go-zero/core/stores/sqlx"
)

var _ OfflineDirectModel = (*customOfflineDirectModel)(nil)

type (
	// OfflineDirectModel is an interface to be customized, add more methods here,
	// and implement the added methods in customOfflineDirectModel.
	OfflineDirectModel interface {
		offlineDirectModel
		// WithSession is the model working inside a transaction.
		WithSession(session sqlx.Session) OfflineDirectModel
		// FindOldestForUpdate returns up to limit of recipient's rows, oldest
		// first, locked until the transaction ends (MySQL; SQLite has one
		// writer at a time and no row locks). Use it inside a transaction.
		FindOldestForUpdate(ctx context.Context, recipient string, limit int) ([]*OfflineDirect, error)
		// DeleteIDs deletes the rows with these ids.
		DeleteIDs(ctx context.Context, ids []int64) error
		// DeleteBefore deletes at most limit rows with ts < before and
		// reports how many it deleted.
		DeleteBefore(ctx context.Context, before int64, limit int) (int64, error)
	}

	customOfflineDirectModel struct {
		*defaultOfflineDirectModel
		dialect Dialect
	}
)

// NewOfflineDirectModel returns a model for the database table.
func NewOfflineDirectModel(conn sqlx.SqlConn, dialect Dialect) OfflineDirectModel {
	return &customOfflineDirectModel{
		defaultOfflineDirectModel: newOfflineDirectModel(conn),
		dialect:                   dialect,
	}
}

func (m *customOfflineDirectModel) WithSession(session sqlx.Session) OfflineDirectModel {
	return NewOfflineDirectModel(sqlx.NewSqlConnFromSession(session), m.dialect)
}

func (m *customOfflineDirectModel) FindOldestForUpdate(ctx context.Context, recipient string, limit int) ([]*OfflineDirect, error) {
	query := fmt.Sprintf("select %s from %s where `recipient` = ? order by `id` limit ?", offlineDirectRows, m.table)
	if m.dialect == MySQL {
		query += " for update"
	}
	var rows []*OfflineDirect
	err := m.conn.QueryRowsCtx(ctx, &rows, query, recipient, limit)
	return rows, err
}

func (m *customOfflineDirectModel) DeleteIDs(ctx context.Context, ids []int64) error {
	for len(ids) > 0 {
		n := min(len(ids), maxRowsPerStatement)
		query := fmt.Sprintf("delete from %s where `id` in (%s)", m.table, placeholders(n))
		if _, err := m.conn.ExecCtx(ctx, query, int64Args(ids[:n])...); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

func (m *customOfflineDirectModel) DeleteBefore(ctx context.Context, before int64, limit int) (int64, error) {
	// See customMessageModel.DeleteBefore for the two forms.
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
