package model

import "strings"

// Dialect is the SQL flavour a model speaks where MySQL and SQLite differ.
// The generated queries (backquoted names, ? placeholders) run on both; the
// custom ones in the *model.go files pick their SQL by dialect.
type Dialect int

const (
	MySQL Dialect = iota // MySQL and MariaDB
	SQLite
)

// maxRowsPerStatement bounds the rows a multi-row statement names, so that
// its placeholders stay far below both engines' limits (65,535 for MySQL,
// 32,766 for SQLite).
const maxRowsPerStatement = 500

// placeholders is "?, ?, ..., ?" with n marks.
func placeholders(n int) string {
	if n <= 0 {
		return ""
	}
	return strings.Repeat("?, ", n-1) + "?"
}

// int64Args converts values to query arguments.
func int64Args(values []int64) []any {
	args := make([]any, len(values))
	for i, v := range values {
		args[i] = v
	}
	return args
}
