// Package static embeds the chat page, so the binary needs no other file.
package static

import "embed"

// Files is the page: index.html, app.js, style.css.
//
//go:embed *.html *.js *.css
var Files embed.FS
