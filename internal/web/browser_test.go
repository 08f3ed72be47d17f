package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// waitTimeout bounds every single wait on the browser.
const waitTimeout = 20 * time.Second

// chromiumPath finds the browser: $CHAT_CHROMIUM, else Debian's chromium.
// Without one the test is skipped, unless CHAT_TEST_REQUIRE=1 (CI) makes it
// a failure. Nothing is ever downloaded.
func chromiumPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv("CHAT_CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	found, err := exec.LookPath(path)
	if err != nil {
		msg := fmt.Sprintf("no Chromium at %q (set CHAT_CHROMIUM): %v", path, err)
		if os.Getenv("CHAT_TEST_REQUIRE") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return found
}

// newBrowser starts a headless Chromium with a fresh profile; it stops when
// the test ends.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath(t)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		// Exactly these flags (chromedp.Headless would add two more).
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	start(t, ctx, "start "+path)
	return ctx
}

// start runs the first (empty) action on a chromedp context, which starts the
// browser or opens the tab. That first run binds the browser or tab to the
// context it is given, so it must not get a timeout of its own: it is
// bounded from outside instead.
func start(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- chromedp.Do(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("%s: no answer within %v", what, waitTimeout)
	}
}

// tab is one page in a browser context of its own (own localStorage).
type tab struct {
	t   *testing.T
	ctx context.Context
	who string

	mu      sync.Mutex
	dialogs []string // JavaScript dialogs the page opened
}

// openTab opens url in a new browser context of browser. Any JavaScript
// dialog is recorded and dismissed, so it cannot block the page.
func openTab(t *testing.T, browser context.Context, url, who string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	p := &tab{t: t, ctx: ctx, who: who}
	start(t, ctx, "open a tab for "+who)
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.dialogs = append(p.dialogs, string(ev.Type)+": "+ev.Message)
			p.mu.Unlock()
			dctx, dcancel := context.WithTimeout(ctx, waitTimeout)
			_, _ = chromedp.Call(dctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
			dcancel()
		}
	}()
	p.do(chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("status")))
	return p
}

// Dialogs returns the JavaScript dialogs opened so far.
func (p *tab) Dialogs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.dialogs...)
}

// do runs actions, failing the test on error or after waitTimeout.
func (p *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v\npage: %s", p.who, err, p.snapshot())
	}
}

// eval evaluates a JavaScript expression and decodes its JSON value into out.
func (p *tab) eval(expr string, out any) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr))
	if err != nil {
		p.t.Fatalf("%s: eval %s: %v", p.who, expr, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			p.t.Fatalf("%s: eval %s: decode %s: %v", p.who, expr, raw, err)
		}
	}
}

// str evaluates an expression that yields a string.
func (p *tab) str(expr string) string {
	p.t.Helper()
	var s string
	p.eval(expr, &s)
	return s
}

// waitJS waits until the expression is truthy.
func (p *tab) waitJS(what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout+2*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(40*time.Millisecond),
		chromedp.WithPollingTimeout(waitTimeout)))
	if err != nil {
		p.t.Fatalf("%s: waiting for %s: %v\npage: %s", p.who, what, err, p.snapshot())
	}
}

// snapshot describes the page for failure messages.
func (p *tab) snapshot() string {
	ctx, cancel := context.WithTimeout(p.ctx, 3*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](`JSON.stringify({
		status: document.getElementById('status').textContent,
		room: document.getElementById('room-title').textContent,
		members: [...document.querySelectorAll('#members li')].map((li) => li.dataset.user),
		typing: document.getElementById('typing').textContent,
		messages: [...document.querySelectorAll('#messages > li')].map((li) =>
			(li.dataset.seq || '-') + ' ' + (li.dataset.from || '') + ': ' + li.textContent),
		toasts: [...document.querySelectorAll('#errors .toast-text')].map((e) => e.textContent),
	})`))
	if err != nil {
		return "(unavailable: " + err.Error() + ")"
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return string(raw)
	}
	return s
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// pickName types a name into the name form, submits it, and waits until the
// page is online under that name (and in its default room).
func (p *tab) pickName(name string) {
	p.t.Helper()
	p.do(
		chromedp.Focus(chromedp.ID("name-input")),
		keys(name),
		chromedp.Click(chromedp.ID("connect")),
	)
	p.waitJS("online as "+name, `document.getElementById('status').dataset.state === 'online' &&
		document.getElementById('status').textContent === `+jsString("online as "+name))
}

// joinRoom joins room through the sidebar form and waits until it is shown.
func (p *tab) joinRoom(room string) {
	p.t.Helper()
	p.do(
		chromedp.Focus(chromedp.ID("room-input")),
		keys(room+"\r"),
	)
	p.waitJS("room "+room+" joined", `document.getElementById('room-title').textContent === `+jsString("#"+room)+` &&
		!!document.querySelector('#rooms li.room-item.current:not(.inactive)') &&
		!document.getElementById('composer').disabled`)
}

// waitMembers waits until the member list shows exactly users (any order).
func (p *tab) waitMembers(users ...string) {
	p.t.Helper()
	want, _ := json.Marshal(users)
	p.waitJS(fmt.Sprintf("members %v", users), `(() => {
		const want = `+string(want)+`.slice().sort();
		const got = [...document.querySelectorAll('#members li')].map((li) => li.dataset.user).sort();
		return JSON.stringify(got) === JSON.stringify(want);
	})()`)
}

// shownMsg is a message element of #messages.
type shownMsg struct {
	Seq     string `json:"seq"`
	From    string `json:"from"`
	Text    string `json:"text"`
	Classes string `json:"classes"`
	Error   string `json:"error"`
}

// messages returns the .msg elements in #messages, in document order.
func (p *tab) messages() []shownMsg {
	p.t.Helper()
	var out []shownMsg
	p.eval(`[...document.querySelectorAll('#messages .msg')].map((li) => ({
		seq: li.dataset.seq || '',
		from: li.dataset.from || '',
		text: li.querySelector('.text').textContent,
		classes: li.className,
		error: (li.querySelector('.error-text') || {}).textContent || '',
	}))`, &out)
	return out
}

// waitMessage waits until a .msg from `from` with exactly text is shown
// (and no longer pending).
func (p *tab) waitMessage(from, text string) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("message %s: %q", from, text), `[...document.querySelectorAll('#messages .msg')].some((li) =>
		li.dataset.from === `+jsString(from)+` && !li.classList.contains('pending') &&
		li.querySelector('.text').textContent === `+jsString(text)+`)`)
}

// texts lists the texts of msgs.
func texts(msgs []shownMsg) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Text
	}
	return out
}

// keys types text into the focused element the way a keyboard does: each key
// is a keyDown that carries its text, then a keyUp ("\r" is Enter, "\t" Tab).
// chromedp.KeyEvent sends the text as a separate char event instead, which
// Chrome delivers even when the page called preventDefault on the keydown:
// Enter would then both send a message and leave a newline in the textarea,
// which no real keyboard does.
func keys(text string, mods ...chromedp.Modifier) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		var modifiers int64
		for _, m := range mods {
			modifiers |= int64(m)
		}
		for _, r := range text {
			var down, up input.DispatchKeyEventParams
			for _, e := range kb.Encode(r) {
				switch e.Type {
				case input.DispatchKeyEventTypeKeyDown:
					down = *e
				case input.DispatchKeyEventTypeChar:
					down.Text, down.UnmodifiedText = e.Text, e.UnmodifiedText
				case input.DispatchKeyEventTypeKeyUp:
					up = *e
				}
			}
			if down.Text == "" {
				down.Type = input.DispatchKeyEventTypeRawKeyDown
			}
			down.Modifiers |= modifiers
			up.Modifiers |= modifiers
			for _, e := range []input.DispatchKeyEventParams{down, up} {
				if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, e); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// typeInComposer focuses the composer and types text ("\r" presses Enter).
func (p *tab) typeInComposer(text string) {
	p.t.Helper()
	p.do(chromedp.Focus(chromedp.ID("composer")), keys(text))
}

// activeID is the id of the focused element.
func (p *tab) activeID() string {
	p.t.Helper()
	return p.str(`document.activeElement ? (document.activeElement.id || document.activeElement.className) : ''`)
}

// containsFold reports whether s contains sub, ignoring case.
func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// screenshot captures the viewport as PNG.
func (p *tab) screenshot() []byte {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("%s: screenshot: %v", p.who, err)
	}
	return png
}
