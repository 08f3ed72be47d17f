package chattest

import (
	"fmt"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"

	"chat/internal/chat"
)

// ConnGoroutines counts this process's goroutines that carry the
// connection label chat.GoroutineLabel with one of values (any value when
// none is given), from a goroutine profile: labels, not function names, so
// that a rename cannot make a count silently zero.
func ConnGoroutines(t testing.TB, values ...string) int {
	t.Helper()
	var profile strings.Builder
	if err := pprof.Lookup("goroutine").WriteTo(&profile, 1); err != nil {
		t.Fatal(err)
	}
	// debug=1 groups identical stacks: "N @ addresses", then the group's
	// labels as "# labels: {"key":"value", ...}".
	n := 0
	for _, group := range strings.Split(profile.String(), "\n\n") {
		count, labels := 0, ""
		for i, line := range strings.Split(group, "\n") {
			if i == 0 {
				count, _ = strconv.Atoi(strings.Fields(line + " x")[0])
			}
			if rest, ok := strings.CutPrefix(line, "# labels: "); ok {
				labels = rest
			}
		}
		if labelled(labels, values) {
			n += count
		}
	}
	return n
}

func labelled(labels string, values []string) bool {
	key := fmt.Sprintf("%q:", chat.GoroutineLabel)
	if len(values) == 0 {
		return strings.Contains(labels, key)
	}
	for _, v := range values {
		if strings.Contains(labels, key+strconv.Quote(v)) {
			return true
		}
	}
	return false
}
