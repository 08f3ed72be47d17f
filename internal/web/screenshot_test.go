package web_test

import (
	"os"
	"path/filepath"
	"testing"

	"chat/internal/chattest"

	"github.com/chromedp/chromedp"
)

// TestScreenshots renders a realistic conversation (a few people, a few
// messages, members, another room, a direct message, someone typing) at
// phone and desktop size, and saves page-mobile.png and page-desktop.png
// into $CHAT_ARTIFACTS (CI) and, with CHAT_UPDATE_SCREENSHOTS=1, into
// docs/screenshots for the README.
func TestScreenshots(t *testing.T) {
	s := chattest.Start(t)
	carol := s.DialName(t, "carol")
	dave := s.DialName(t, "dave")
	erin := s.DialName(t, "erin")
	bob := s.DialName(t, "bob")
	for _, c := range []*chattest.Client{carol, dave} {
		c.Join("design")
		c.Join("general")
	}
	erin.Join("random")
	erin.Join("general")
	carol.Say("design", "Morning! I pushed the new colour palette to the style guide.")
	dave.Say("design", "Looks great. Do the buttons get the darker blue?")

	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.do(chromedp.EmulateViewport(1280, 800))
	alice.pickName("alice")
	alice.joinRoom("design")
	alice.waitMembers("alice", "carol", "dave")
	alice.typeInComposer("Yes: darker blue for primary actions,")
	alice.do(keys("\r", chromedp.ModifierShift), keys("the lighter one for hover.\r"))
	alice.waitMessage("alice", "Yes: darker blue for primary actions,\nthe lighter one for hover.")
	carol.Say("design", "Perfect, updating it now.")
	alice.waitMessage("carol", "Perfect, updating it now.")
	bob.OK("direct", map[string]any{"to": "alice", "text": "Lunch at 12:30?"}, nil)
	alice.waitJS("direct message listed", `!!document.querySelector('#rooms li[data-room="@bob"] .unread:not([hidden])')`)
	alice.waitJS("other rooms listed", `!!document.querySelector('#directory li[data-dir-room="random"]')`)

	shoot := func(name string, width, height int64, opts ...chromedp.EmulateViewportOption) {
		t.Helper()
		alice.do(chromedp.EmulateViewport(width, height, opts...))
		dave.OK("typing", map[string]any{"room": "design"}, nil)
		alice.waitJS("dave is typing", `document.getElementById('typing').textContent === 'dave is typing…'`)
		alice.eval(`document.activeElement.blur(), true`, nil) // no focus ring in the picture
		png := alice.screenshot()
		// CI keeps $CHAT_ARTIFACTS; the README's copies change only when
		// asked, so that a test run leaves the tree as it was.
		dirs := []string{t.TempDir()}
		if a := os.Getenv("CHAT_ARTIFACTS"); a != "" {
			dirs = []string{a}
		}
		if os.Getenv("CHAT_UPDATE_SCREENSHOTS") == "1" {
			dirs = append(dirs, filepath.Join("..", "..", "docs", "screenshots"))
		}
		for _, dir := range dirs {
			saveScreenshot(t, dir, name, png)
		}
	}
	shoot("page-desktop.png", 1280, 800)
	shoot("page-mobile.png", 390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2))
}

// saveScreenshot writes png into dir as name.
func saveScreenshot(t *testing.T, dir, name string, png []byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}
