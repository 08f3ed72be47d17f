// Package web holds the real-browser tests of the bundled page.
package web
