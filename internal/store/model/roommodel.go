package model

import (
	"context"
	"fmt"

	"github.com/zeromicro/go-zero/core/stores/sqlx"
)

var _ RoomModel = (*customRoomModel)(nil)

type (
	// RoomModel is an interface to be customized, add more methods here,
	// and implement the added methods in customRoomModel.
	RoomModel interface {
		roomModel
		// WithSession is the model working inside a transaction.
		WithSession(session sqlx.Session) RoomModel
		// AdvanceHead records that a room's messages of epoch up to seq are
		// stored: a room without a head gets (epoch, seq); a head of the same
		// epoch moves to seq if that is higher (never back); a head of another
		// epoch becomes (epoch, seq), the room's sequence having restarted.
		AdvanceHead(ctx context.Context, name, epoch string, seq int64) error
	}

	customRoomModel struct {
		*defaultRoomModel
		dialect Dialect
	}
)

// NewRoomModel returns a model for the database table.
func NewRoomModel(conn sqlx.SqlConn, dialect Dialect) RoomModel {
	return &customRoomModel{
		defaultRoomModel: newRoomModel(conn),
		dialect:          dialect,
	}
}

func (m *customRoomModel) WithSession(session sqlx.Session) RoomModel {
	return NewRoomModel(sqlx.NewSqlConnFromSession(session), m.dialect)
}

func (m *customRoomModel) AdvanceHead(ctx context.Context, name, epoch string, seq int64) error {
	// MySQL assigns left to right and later assignments see earlier ones,
	// so seq is set while epoch still holds the old value. SQLite's
	// right-hand sides all see the old row.
	query := fmt.Sprintf("insert into %s (%s) values (?, ?, ?) on duplicate key update "+
		"`seq` = if(`epoch` = values(`epoch`), greatest(`seq`, values(`seq`)), values(`seq`)), "+
		"`epoch` = values(`epoch`)", m.table, roomRowsExpectAutoSet)
	if m.dialect == SQLite {
		query = fmt.Sprintf("insert into %s (%s) values (?, ?, ?) on conflict (`name`) do update set "+
			"`seq` = case when `epoch` = excluded.`epoch` then max(`seq`, excluded.`seq`) else excluded.`seq` end, "+
			"`epoch` = excluded.`epoch`", m.table, roomRowsExpectAutoSet)
	}
	_, err := m.conn.ExecCtx(ctx, query, name, epoch, seq)
	return err
}
