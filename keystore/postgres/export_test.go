package postgres

// Applied returns the migration versions s applied when it opened.
func Applied(s *Store) []int64 { return s.applied }

// SchemaVersion is the newest schema version this build knows.
var SchemaVersion = schemaVersion

// LoadMigrations is loadMigrations, for testing malformed migration sets.
var LoadMigrations = loadMigrations

// RenderMigrations renders every embedded migration for schema and prefix.
func RenderMigrations(schema, prefix string) ([]string, error) {
	n := names{schema: schema, prefix: prefix}
	var out []string
	for _, m := range migrations {
		sql, err := n.render(m)
		if err != nil {
			return nil, err
		}
		out = append(out, sql)
	}
	return out, nil
}
