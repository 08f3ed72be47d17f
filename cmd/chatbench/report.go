package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// report is everything a run measured; the JSON output is this struct.
type report struct {
	Mode        string   `json:"mode"`               // "chat" or "raw"
	Transport   string   `json:"receiver_transport"` // "ws" or "sse"; senders use WebSocket
	URLs        []string `json:"urls"`               // the receivers' (sse: each -url's /sse)
	SendersURL  string   `json:"senders_url"`
	Room        string   `json:"room"`
	Receivers   int      `json:"receivers"`
	Senders     int      `json:"senders"`
	Messages    int      `json:"messages_per_sender"`
	Rate        float64  `json:"rate_per_sender"` // 0: closed loop
	SendFor     float64  `json:"send_for_seconds,omitempty"`
	Size        int      `json:"size"`
	ConnectOnly bool     `json:"connect_only"`
	Stopped     string   `json:"stopped,omitempty"` // why the run ended early
	SetupFailed bool     `json:"setup_failed,omitempty"`

	Connected        int            `json:"receivers_connected"`
	ConnectMs        float64        `json:"connect_ms"` // until every welcome (raw: every handshake)
	JoinMs           float64        `json:"join_ms,omitempty"`
	LastJoinReplyMs  float64        `json:"last_join_reply_ms,omitempty"` // from the start of the run (the first dial)
	SendersConnected int            `json:"senders_connected"`
	ConnectErrors    map[string]int `json:"connect_errors,omitempty"`

	Sent           int64          `json:"sent"`
	Acked          int64          `json:"acked"` // raw mode: written
	SendErrors     map[string]int `json:"send_errors,omitempty"`
	SenderFailures []string       `json:"sender_failures,omitempty"`
	SendSeconds    float64        `json:"send_seconds"`
	SendRate       float64        `json:"send_rate"` // all senders, messages/s

	Expected         int64   `json:"expected"` // acked × receivers
	Received         int64   `json:"received"` // unique bench messages
	Loss             int64   `json:"loss"`     // acked, never received (disconnected receivers included)
	UnackedReceived  int64   `json:"unacked_received,omitempty"`
	Duplicates       int64   `json:"duplicates"`
	OutOfOrder       int64   `json:"out_of_order"`
	SeqGaps          int64   `json:"seq_gaps,omitempty"`
	Foreign          int64   `json:"foreign,omitempty"`
	Resyncs          int64   `json:"resyncs,omitempty"`
	ErrorEvents      int64   `json:"error_events,omitempty"`
	Malformed        int64   `json:"malformed,omitempty"`
	DeliverySeconds  float64 `json:"delivery_seconds"` // first send to last delivery
	DeliveriesPerSec float64 `json:"deliveries_per_sec"`
	Drained          bool    `json:"drained"` // every accepted message reached every live receiver

	ReceiverDisconnects int            `json:"receiver_disconnects"`
	DisconnectReasons   map[string]int `json:"disconnect_reasons,omitempty"`
	SenderDisconnects   map[string]int `json:"sender_disconnects,omitempty"`

	Latency      latencySummary            `json:"latency"`
	LatencyByURL map[string]latencySummary `json:"latency_by_url,omitempty"`
	// ReplyLatency: from writing a send to reading its (successful) reply
	// on the sender's connection; none in raw mode.
	ReplyLatency *latencySummary `json:"reply_latency,omitempty"`

	Leave *leaveReport `json:"leave,omitempty"` // chat mode, after the drain, unless the run had stopped

	Server *serverReport `json:"server,omitempty"`
	Bench  benchReport   `json:"bench"`

	sendStartNs  int64
	settledAfter time.Duration // from the joins to the "settled" sample
}

type serverReport struct {
	PID                    int     `json:"pid"`
	CPUSeconds             float64 `json:"cpu_seconds"`       // during sends and drain (connect-only: connect and hold)
	CPUSecondsTotal        float64 `json:"cpu_seconds_total"` // the whole run, to the close
	DeliveriesPerCPUSecond float64 `json:"deliveries_per_cpu_second,omitempty"`
	RSSBeforeMiB           float64 `json:"rss_before_mib"`
	RSSConnectedMiB        float64 `json:"rss_connected_mib"`
	RSSEndMiB              float64 `json:"rss_end_mib"`
	RSSGrowthMiB           float64 `json:"rss_growth_mib"`
	RSSPerConnectionKiB    float64 `json:"rss_per_connection_kib"`
	Error                  string  `json:"error,omitempty"`

	// Per phase. Pointers: absent when the phase did not run; 0 is a
	// measurement (/proc counts CPU in 10 ms ticks).
	CPUConnectSeconds          *float64 `json:"cpu_connect_seconds,omitempty"`            // the first dial to the last welcome (raw: handshake)
	CPUJoinSeconds             *float64 `json:"cpu_join_seconds,omitempty"`               // the last welcome to the last join reply
	CPULeaveSeconds            *float64 `json:"cpu_leave_seconds,omitempty"`              // the close to an empty room on every replica (leave.empty false: to the run's end)
	SettleSeconds              float64  `json:"settle_seconds,omitempty"`                 // from the joins to rss_settled_mib (-settle)
	RSSSettledMiB              *float64 `json:"rss_settled_mib,omitempty"`                // before the senders connect
	RSSSettledPerConnectionKiB *float64 `json:"rss_settled_per_connection_kib,omitempty"` // (settled - before) / receivers
}

type benchReport struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	RSSMiB     float64 `json:"rss_mib"`
}

func newReport(cfg *config) *report {
	mode := "chat"
	if cfg.raw {
		mode = "raw"
	}
	urls := cfg.urls
	if cfg.transport == transportSSE {
		urls = cfg.sseURLs
	}
	return &report{
		Mode: mode, Transport: cfg.transport, URLs: urls, SendersURL: cfg.sendersURL, Room: cfg.room,
		Receivers: cfg.receivers, Senders: cfg.senders, Messages: cfg.messages,
		Rate: cfg.rate, SendFor: cfg.sendFor.Seconds(), Size: cfg.size, ConnectOnly: cfg.connectOnly,
	}
}

// finishConnect records the receivers' setup.
func (rep *report) finishConnect(b *bench) {
	rep.Connected = len(b.receivers)
}

// finish gathers the counters of every connection (all goroutines have
// ended) into the report.
func (b *bench) finish(ctx context.Context, rep *report, srv *serverProbe, self0 procSample) *report {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) && rep.Leave != nil: // it starts only in time
		rep.Stopped = "the -duration cap was reached while waiting for the room to empty"
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		rep.Stopped = "the -duration cap was reached"
	case ctx.Err() != nil:
		rep.Stopped = "interrupted"
	}
	b.mu.Lock()
	if len(b.connectErrors) > 0 {
		rep.ConnectErrors = maps.Clone(b.connectErrors)
	}
	b.mu.Unlock()
	rep.Connected = len(b.receivers)
	rep.SendersConnected = len(b.senders)

	// Senders.
	acked := make([]bitset, b.cfg.senders)
	var ackedTotal int64
	replies := &histogram{}
	for _, s := range b.senders {
		replies.merge(s.replyHist)
		rep.Sent += int64(s.sent)
		n := s.acked.count()
		ackedTotal += n
		acked[s.id] = s.acked
		for code, c := range s.errorCodes {
			addCount(&rep.SendErrors, code, c)
		}
		if s.writeErr != "" {
			rep.SenderFailures = append(rep.SenderFailures, fmt.Sprintf("s%d: %s", s.id, s.writeErr))
		}
		if s.disconnect != "" {
			addCount(&rep.SenderDisconnects, s.disconnect, 1)
		}
	}
	rep.Acked = ackedTotal
	if rep.SendSeconds > 0 {
		rep.SendRate = float64(rep.Sent) / rep.SendSeconds
	}

	// Receivers.
	all := &histogram{}
	byURL := map[string]*histogram{}
	var lastRecv int64
	for _, r := range b.receivers {
		rep.Received += r.delivered.Load()
		for i, a := range acked {
			rep.Loss += a.andNotCount(r.got[i])
			rep.UnackedReceived += r.got[i].andNotCount(a)
		}
		rep.Duplicates += r.dups
		rep.OutOfOrder += r.outOfOrder
		rep.SeqGaps += r.seqGaps
		rep.Foreign += r.foreign
		rep.Resyncs += r.resyncs
		rep.ErrorEvents += r.errors
		rep.Malformed += r.malformed
		if r.disconnect != "" {
			rep.ReceiverDisconnects++
			addCount(&rep.DisconnectReasons, r.disconnect, 1)
		}
		all.merge(r.hist)
		if byURL[r.url] == nil {
			byURL[r.url] = &histogram{}
		}
		byURL[r.url].merge(r.hist)
		lastRecv = max(lastRecv, r.lastRecvNs)
	}
	rep.Expected = ackedTotal * int64(len(b.receivers))
	rep.Latency = all.summary()
	if replies.n > 0 {
		r := replies.summary()
		rep.ReplyLatency = &r
	}
	if len(b.cfg.urls) > 1 {
		rep.LatencyByURL = map[string]latencySummary{}
		for u, h := range byURL {
			rep.LatencyByURL[u] = h.summary()
		}
	}
	if rep.sendStartNs > 0 && lastRecv > rep.sendStartNs {
		rep.DeliverySeconds = float64(lastRecv-rep.sendStartNs) / 1e9
		rep.DeliveriesPerSec = float64(rep.Received) / rep.DeliverySeconds
	}

	// Processes.
	if self1, err := readProc("self"); err == nil {
		rep.Bench = benchReport{CPUSeconds: (self1.CPU - self0.CPU).Seconds(), RSSMiB: mib(self1.RSSKB)}
	}
	if srv.pid > 0 {
		rep.Server = srv.report(rep, b)
	}
	return rep
}

func (p *serverProbe) report(rep *report, b *bench) *serverReport {
	conns := len(b.receivers) + len(b.senders)
	connectOnly := b.cfg.connectOnly
	sr := &serverReport{PID: p.pid}
	if p.err != nil {
		sr.Error = p.err.Error()
	}
	before, ok0 := p.samples["before"]
	end, ok1 := p.samples["end"]
	if !ok0 || !ok1 {
		if sr.Error == "" {
			sr.Error = "no samples"
		}
		return sr
	}
	from := p.samples["send"]
	if connectOnly {
		from = before
	}
	sr.CPUSeconds = (end.CPU - from.CPU).Seconds()
	sr.CPUSecondsTotal = (end.CPU - before.CPU).Seconds()
	if sr.CPUSeconds > 0 && !connectOnly {
		sr.DeliveriesPerCPUSecond = float64(rep.Received) / sr.CPUSeconds
	}
	sr.RSSBeforeMiB = mib(before.RSSKB)
	sr.RSSConnectedMiB = mib(p.samples["connected"].RSSKB)
	sr.RSSEndMiB = mib(end.RSSKB)
	sr.RSSGrowthMiB = mib(end.RSSKB - before.RSSKB)
	if conns > 0 {
		sr.RSSPerConnectionKiB = float64(end.RSSKB-before.RSSKB) / float64(conns)
	}

	cpu := func(from, to string) *float64 {
		a, ok0 := p.samples[from]
		z, ok1 := p.samples[to]
		if !ok0 || !ok1 {
			return nil
		}
		v := (z.CPU - a.CPU).Seconds()
		return &v
	}
	sr.CPUConnectSeconds = cpu("before", "connected")
	if !b.cfg.raw {
		sr.CPUJoinSeconds = cpu("connected", "joined")
		sr.CPULeaveSeconds = cpu("end", "empty")
	}
	if settled, ok := p.samples["settled"]; ok {
		sr.SettleSeconds = rep.settledAfter.Seconds()
		v := mib(settled.RSSKB)
		sr.RSSSettledMiB = &v
		if n := len(b.receivers); n > 0 {
			kib := float64(settled.RSSKB-before.RSSKB) / float64(n)
			sr.RSSSettledPerConnectionKiB = &kib
		}
	}
	return sr
}

func mib(kb int64) float64 { return float64(kb) / 1024 }

func addCount(m *map[string]int, key string, n int) {
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[key] += n
}

func (rep *report) writeJSON(w io.Writer) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rep)
}

func (rep *report) writeText(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	rate := "closed loop"
	if rep.Rate > 0 {
		rate = fmt.Sprintf("%g msg/s per sender", rep.Rate)
	}
	if rep.SendFor > 0 {
		rate += fmt.Sprintf(", sending for at most %gs", rep.SendFor)
	}
	p("chatbench (%s mode)", rep.Mode)
	transport := ""
	if rep.Transport == transportSSE {
		transport = " (SSE streams, joins POSTed to /api/sessions/<session>/commands)"
	}
	p("  receivers on  %s%s", strings.Join(rep.URLs, ", "), transport)
	if !rep.ConnectOnly {
		p("  senders on    %s", rep.SendersURL)
		room := "room " + rep.Room + ": "
		if rep.Mode == "raw" {
			room = "" // the raw protocol has a single broadcast channel
		}
		p("  %s%d receivers, %d senders x %d messages of %d bytes, %s",
			room, rep.Receivers, rep.Senders, rep.Messages, rep.Size, rate)
	}
	if rep.Stopped != "" {
		p("  STOPPED EARLY: %s", rep.Stopped)
	}

	p("connections")
	what := "welcomes"
	if rep.Mode == "raw" {
		what = "handshakes"
	}
	p("  receivers     %d/%d connected, %s until the last of the %s", rep.Connected, rep.Receivers, fmtMs(rep.ConnectMs), what)
	if rep.Mode != "raw" && rep.JoinMs > 0 {
		p("  joins         %s", fmtMs(rep.JoinMs))
	}
	if rep.LastJoinReplyMs > 0 {
		p("  last join     %s after the start (the first dial)", fmtMs(rep.LastJoinReplyMs))
	}
	if !rep.ConnectOnly {
		p("  senders       %d/%d connected", rep.SendersConnected, rep.Senders)
	}
	if len(rep.ConnectErrors) > 0 {
		p("  errors        %s", fmtCounts(rep.ConnectErrors))
	}

	if !rep.ConnectOnly && !rep.SetupFailed {
		p("sends")
		p("  sent          %d in %.2fs (%.0f/s), accepted %d", rep.Sent, rep.SendSeconds, rep.SendRate, rep.Acked)
		if len(rep.SendErrors) > 0 {
			p("  errors        %s", fmtCounts(rep.SendErrors))
		}
		for _, f := range rep.SenderFailures {
			p("  stopped       %s", f)
		}
		p("deliveries")
		p("  received      %d of %d expected, in %.2fs: %.0f deliveries/s", rep.Received, rep.Expected, rep.DeliverySeconds, rep.DeliveriesPerSec)
		if rep.Mode == "raw" {
			p("  loss %d, duplicates %d, out-of-order %d, foreign %d",
				rep.Loss, rep.Duplicates, rep.OutOfOrder, rep.Foreign)
		} else {
			p("  loss %d, duplicates %d, out-of-order %d (seq gaps %d), resync %d, foreign %d, error events %d, malformed %d",
				rep.Loss, rep.Duplicates, rep.OutOfOrder, rep.SeqGaps, rep.Resyncs, rep.Foreign, rep.ErrorEvents, rep.Malformed)
		}
		if rep.UnackedReceived > 0 {
			p("  received without an accepted reply: %d", rep.UnackedReceived)
		}
		if !rep.Drained {
			p("  NOT DRAINED: accepted messages were still missing when the run stopped (-drain)")
			if rep.ReceiverDisconnects == 0 {
				p("  (no receiver disconnected: the loss above is messages still in flight)")
			}
		}
	}
	p("disconnects")
	p("  receivers     %d %s", rep.ReceiverDisconnects, fmtCounts(rep.DisconnectReasons))
	if len(rep.SenderDisconnects) > 0 {
		p("  senders       %s", fmtCounts(rep.SenderDisconnects))
	}

	if !rep.ConnectOnly && !rep.SetupFailed {
		p("latency (receive time - send time)")
		p("  all           %s", fmtLatency(rep.Latency))
		if rep.ReplyLatency != nil {
			p("  send reply    %s", fmtLatency(*rep.ReplyLatency))
		}
		for _, u := range slices.Sorted(maps.Keys(rep.LatencyByURL)) {
			p("  %s  %s", u, fmtLatency(rep.LatencyByURL[u]))
		}
	}

	if l := rep.Leave; l != nil {
		p("leave (every connection closed at once, GET members every %s)", leavePollInterval)
		for _, r := range l.Replicas {
			p("  %s  %s", r.URL, fmtLeaveReplica(r))
		}
		if l.Empty {
			p("  room          empty on every replica %s after the close", fmtMs(l.EmptyMs))
		} else {
			p("  room          NOT EMPTY when the run stopped (see the replicas above)")
		}
	}

	if s := rep.Server; s != nil {
		p("server (pid %d)", s.PID)
		if s.Error != "" {
			p("  error         %s", s.Error)
		}
		phase := "during sends and drain"
		if rep.ConnectOnly {
			phase = "during connect and hold"
		}
		p("  cpu           %.2fs %s (%.2fs whole run)", s.CPUSeconds, phase, s.CPUSecondsTotal)
		if v := s.CPUConnectSeconds; v != nil {
			p("  cpu connect   %.2fs from the first dial to the last %s", *v, strings.TrimSuffix(what, "s"))
		}
		if v := s.CPUJoinSeconds; v != nil {
			p("  cpu join      %.2fs from the last welcome to the last join reply", *v)
		}
		if v := s.CPULeaveSeconds; v != nil {
			until := "until the room was empty on every replica"
			if rep.Leave == nil || !rep.Leave.Empty {
				until = "until the run stopped, the room NOT EMPTY"
			}
			p("  cpu leave     %.2fs from the close %s", *v, until)
		}
		if s.DeliveriesPerCPUSecond > 0 {
			p("  efficiency    %.0f deliveries per server CPU-second", s.DeliveriesPerCPUSecond)
		}
		p("  rss           %.1f MiB before, %.1f MiB connected, %.1f MiB at end: +%.1f MiB, %.1f KiB per connection",
			s.RSSBeforeMiB, s.RSSConnectedMiB, s.RSSEndMiB, s.RSSGrowthMiB, s.RSSPerConnectionKiB)
		if s.RSSSettledMiB != nil && s.RSSSettledPerConnectionKiB != nil {
			after := "joins"
			if rep.Mode == "raw" {
				after = "connects"
			}
			p("  rss settled   %.1f MiB %.1fs after the %s, before the senders: %+.1f MiB, %.1f KiB per connection",
				*s.RSSSettledMiB, s.SettleSeconds, after, *s.RSSSettledMiB-s.RSSBeforeMiB, *s.RSSSettledPerConnectionKiB)
		}
	}
	p("bench")
	p("  cpu %.2fs, rss %.1f MiB", rep.Bench.CPUSeconds, rep.Bench.RSSMiB)
}

// fmtLeaveReplica describes how one replica saw the room empty.
func fmtLeaveReplica(r leaveReplica) string {
	var out string
	switch {
	case r.Empty:
		out = fmt.Sprintf("empty after %s (%d polls, the first read %d)", fmtMs(r.EmptyMs), r.Polls, r.FirstCount)
	case r.Polls > 0:
		out = fmt.Sprintf("NOT EMPTY: count %d at the last of %d polls (the first read %d)", r.LastCount, r.Polls, r.FirstCount)
	default:
		out = "NOT EMPTY: no count read"
	}
	if r.Errors > 0 {
		out += fmt.Sprintf("; %d errors, the last: %s", r.Errors, r.LastError)
	}
	return out
}

func fmtMs(v float64) string {
	d := time.Duration(v * 1e6)
	if d >= time.Second {
		return d.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("%.1fms", v)
}

func fmtLatency(l latencySummary) string {
	if l.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %.2fms  p90 %.2fms  p99 %.2fms  p99.9 %.2fms  max %.2fms  (mean %.2fms, n=%d)",
		l.P50Ms, l.P90Ms, l.P99Ms, l.P999Ms, l.MaxMs, l.MeanMs, l.Count)
}

func fmtCounts(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
