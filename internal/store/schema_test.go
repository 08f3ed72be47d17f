package store_test

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"chat/internal/chattest"
	"chat/internal/store"
)

// table is what the two schema files must agree on: the columns in order
// with their types, the primary key and the named indexes.
type table struct {
	Columns    []string            // "name type", in order
	PrimaryKey []string            // column names
	Indexes    map[string][]string // index name -> columns; unique ones are prefixed "unique "
}

func (t *table) addIndex(name string, unique bool, cols []string) {
	if t.Indexes == nil {
		t.Indexes = map[string][]string{}
	}
	if unique {
		cols = append([]string{"unique"}, cols...)
	}
	t.Indexes[name] = cols
}

// normType maps the spellings of a column type to one: SQLite's rowid
// alias must be spelled INTEGER where MySQL says bigint, and MariaDB reports
// bigint with its display width.
func normType(typ string) string {
	typ = strings.ToLower(typ)
	if typ == "integer" || strings.HasPrefix(typ, "bigint(") {
		return "bigint"
	}
	return typ
}

var (
	createTable = regexp.MustCompile("(?is)^create table if not exists `(\\w+)` \\((.*)\n\\)[^\n]*$")
	createIndex = regexp.MustCompile("(?is)^create (unique )?index if not exists `(\\w+)` on `(\\w+)` \\((.*)\\)$")
	columnDef   = regexp.MustCompile("^`(\\w+)` (\\w+(?:\\(\\d+\\))?)(.*)$")
	keyDef      = regexp.MustCompile("(?i)^(primary key|unique key `(\\w+)`|key `(\\w+)`) \\((.*)\\)$")
)

func names(list string) []string {
	var out []string
	for n := range strings.SplitSeq(list, ",") {
		out = append(out, strings.Trim(strings.TrimSpace(n), "`"))
	}
	return out
}

// parseSchema reads a schema file as Open applies it, one statement at a
// time, and fails on any line it does not understand, so that a change to
// one file cannot slip past the comparison.
func parseSchema(t *testing.T, file, schema string) map[string]*table {
	t.Helper()
	tables := map[string]*table{}
	for _, stmt := range store.Statements(schema) {
		if m := createIndex.FindStringSubmatch(stmt); m != nil {
			tb := tables[m[3]]
			if tb == nil {
				t.Fatalf("%s: index %s on %s before the table", file, m[2], m[3])
			}
			tb.addIndex(m[2], m[1] != "", names(m[4]))
			continue
		}
		m := createTable.FindStringSubmatch(stmt)
		if m == nil {
			t.Fatalf("%s: statement is neither CREATE TABLE IF NOT EXISTS nor CREATE INDEX IF NOT EXISTS:\n%s", file, stmt)
		}
		tb := &table{}
		tables[m[1]] = tb
		for line := range strings.Lines(m[2]) {
			line = strings.TrimSuffix(strings.TrimSpace(line), ",")
			if line == "" {
				continue
			}
			if c := columnDef.FindStringSubmatch(line); c != nil {
				tb.Columns = append(tb.Columns, c[1]+" "+normType(c[2]))
				if strings.Contains(strings.ToLower(c[3]), "primary key") {
					tb.PrimaryKey = append(tb.PrimaryKey, c[1])
				}
				continue
			}
			k := keyDef.FindStringSubmatch(line)
			switch {
			case k == nil:
				t.Fatalf("%s: table %s: cannot read the line %q", file, m[1], line)
			case strings.EqualFold(k[1], "primary key"):
				tb.PrimaryKey = names(k[4])
			case k[2] != "":
				tb.addIndex(k[2], true, names(k[4]))
			default:
				tb.addIndex(k[3], false, names(k[4]))
			}
		}
	}
	return tables
}

func TestSchemasHaveTheSameTablesColumnsAndIndexes(t *testing.T) {
	mysqlTables := parseSchema(t, "mysql.sql", store.MySQLSchema)
	sqliteTables := parseSchema(t, "sqlite.sql", store.SQLiteSchema)
	for _, name := range []string{"room", "message", "offline_direct"} {
		if mysqlTables[name] == nil {
			t.Errorf("mysql.sql has no table %s", name)
		}
	}
	if !reflect.DeepEqual(mysqlTables, sqliteTables) {
		for _, name := range slices.Sorted(maps.Keys(mysqlTables)) {
			t.Logf("mysql.sql  %s: %+v", name, *mysqlTables[name])
		}
		for _, name := range slices.Sorted(maps.Keys(sqliteTables)) {
			t.Logf("sqlite.sql %s: %+v", name, *sqliteTables[name])
		}
		t.Fatal("mysql.sql and sqlite.sql differ")
	}
}

func TestMySQLTablesAreInnoDBWithBinaryUTF8MB4(t *testing.T) {
	if !strings.Contains(store.MySQLSchema, "CREATE TABLE") {
		t.Fatal("mysql.sql creates no table")
	}
	for _, stmt := range store.Statements(store.MySQLSchema) {
		for _, want := range []string{"ENGINE=InnoDB", "CHARSET=utf8mb4", "COLLATE=utf8mb4_bin"} {
			if !strings.Contains(stmt, want) {
				t.Errorf("statement lacks %s:\n%s", want, stmt)
			}
		}
	}
}

// TestSchemaOnMariaDBMatchesSQLite compares the tables as the two servers
// built them, which the parse above cannot see (a type MariaDB reads
// differently, an index it renamed).
func TestSchemaOnMariaDBMatchesSQLite(t *testing.T) {
	my := chattest.NewStoreDSN(t, store.DriverMySQL)
	lite := chattest.NewStoreDSN(t, store.DriverSQLite)
	for _, d := range []chattest.StoreDSN{my, lite} {
		s, err := store.Open(d.Driver, d.DSN)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	myTables := mariaDBTables(t, my.DSN)
	liteTables := sqliteTables(t, lite.DSN)
	if !reflect.DeepEqual(myTables, liteTables) {
		for _, name := range slices.Sorted(maps.Keys(myTables)) {
			t.Logf("MariaDB %s: %+v", name, *myTables[name])
		}
		for _, name := range slices.Sorted(maps.Keys(liteTables)) {
			t.Logf("SQLite  %s: %+v", name, *liteTables[name])
		}
		t.Fatal("the tables differ")
	}
}

func query(t *testing.T, db *sql.DB, q string, args []any, dest ...any) (each func(func())) {
	t.Helper()
	return func(f func()) {
		t.Helper()
		rows, err := db.QueryContext(context.Background(), q, args...)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		defer rows.Close()
		for rows.Next() {
			if err := rows.Scan(dest...); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			f()
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func mariaDBTables(t *testing.T, dsn string) map[string]*table {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tables := map[string]*table{}
	var (
		name, column, typ, engine, collation string
		nonUnique                            int
	)
	query(t, db, "SELECT table_name, engine, table_collation FROM information_schema.tables WHERE table_schema = DATABASE()",
		nil, &name, &engine, &collation)(func() {
		if engine != "InnoDB" || collation != "utf8mb4_bin" {
			t.Errorf("table %s: engine %s, collation %s; want InnoDB, utf8mb4_bin", name, engine, collation)
		}
	})
	query(t, db, "SELECT table_name, column_name, column_type FROM information_schema.columns WHERE table_schema = DATABASE() ORDER BY table_name, ordinal_position",
		nil, &name, &column, &typ)(func() {
		if tables[name] == nil {
			tables[name] = &table{}
		}
		tables[name].Columns = append(tables[name].Columns, column+" "+normType(typ))
	})
	query(t, db, "SELECT table_name, index_name, non_unique, column_name FROM information_schema.statistics WHERE table_schema = DATABASE() ORDER BY table_name, index_name, seq_in_index",
		nil, &name, &typ, &nonUnique, &column)(func() {
		tb := tables[name]
		if typ == "PRIMARY" {
			tb.PrimaryKey = append(tb.PrimaryKey, column)
			return
		}
		if tb.Indexes == nil || tb.Indexes[typ] == nil {
			tb.addIndex(typ, nonUnique == 0, nil)
		}
		tb.Indexes[typ] = append(tb.Indexes[typ], column)
	})
	return tables
}

func sqliteTables(t *testing.T, path string) map[string]*table {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tables := map[string]*table{}
	var names []string
	var name string
	query(t, db, "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name", nil, &name)(func() {
		names = append(names, name)
	})
	for _, tn := range names {
		tb := &table{}
		tables[tn] = tb
		var (
			cid, notNull, pk int
			typ              string
			dflt             sql.NullString
		)
		pks := map[int]string{}
		query(t, db, fmt.Sprintf("PRAGMA table_info(`%s`)", tn), nil, &cid, &name, &typ, &notNull, &dflt, &pk)(func() {
			tb.Columns = append(tb.Columns, name+" "+normType(typ))
			if pk > 0 {
				pks[pk] = name
			}
		})
		for _, i := range slices.Sorted(maps.Keys(pks)) {
			tb.PrimaryKey = append(tb.PrimaryKey, pks[i])
		}
		type index struct {
			name   string
			unique bool
		}
		var indexes []index
		var (
			seq, unique, partial int
			origin               string
		)
		query(t, db, fmt.Sprintf("PRAGMA index_list(`%s`)", tn), nil, &seq, &name, &unique, &origin, &partial)(func() {
			if origin != "pk" { // the primary key's own index, named sqlite_autoindex_*
				indexes = append(indexes, index{name, unique == 1})
			}
		})
		for _, ix := range indexes {
			tb.addIndex(ix.name, ix.unique, nil)
			var seqno, cid int
			var column string
			query(t, db, fmt.Sprintf("PRAGMA index_info(`%s`)", ix.name), nil, &seqno, &cid, &column)(func() {
				tb.Indexes[ix.name] = append(tb.Indexes[ix.name], column)
			})
		}
	}
	return tables
}
