package store

// For the schema tests in package store_test.
var (
	MySQLSchema  = mysqlSchema
	SQLiteSchema = sqliteSchema
	Statements   = statements
)
