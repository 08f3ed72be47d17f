package chattest

import "chat/internal/config"

// WithStore gives a config the durable store s (SPEC §14).
func WithStore(s StoreDSN) func(*config.Config) {
	return func(c *config.Config) {
		c.Store.Driver, c.Store.DSN = s.Driver, s.DSN
	}
}
