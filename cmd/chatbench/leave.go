package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// The leave phase: every connection is closed at once, then each replica is
// asked for the room's member count until it reads 0 (count is cluster-wide,
// so every replica must see the last member leave).
const (
	leavePollInterval = 50 * time.Millisecond
	leavePollTimeout  = 5 * time.Second // one members request; a busy server may answer late
	maxMembersReply   = 1 << 20         // bytes read of a members reply (limit=1: a few hundred)
)

// leaveReport is what the leave phase measured.
type leaveReport struct {
	Empty    bool           `json:"empty"`              // count 0 on every replica
	EmptyMs  float64        `json:"empty_ms,omitempty"` // from the close until the last replica read 0
	Replicas []leaveReplica `json:"replicas"`
}

// leaveReplica is one replica's view of the room emptying.
type leaveReplica struct {
	URL        string  `json:"url"`                // the members endpoint polled
	Empty      bool    `json:"empty"`              // it read count 0
	EmptyMs    float64 `json:"empty_ms,omitempty"` // from the close until the reply with count 0 arrived
	Polls      int     `json:"polls"`              // replies with a count
	FirstCount int     `json:"first_count"`        // the count in the first of them, read as the close began
	LastCount  int     `json:"last_count"`         // the count in the last of them
	Errors     int     `json:"errors,omitempty"`   // requests without a count
	LastError  string  `json:"last_error,omitempty"`
}

// membersURL derives a replica's members endpoint for room from its
// WebSocket URL: the REST API is served by the same listener, under /api
// (ws:// gives http://, wss:// https://; the WebSocket's path is dropped).
func membersURL(wsURL, room string) (string, error) {
	return replicaURL(wsURL, "/api/rooms/"+room+"/members", "limit=1")
}

// replicaURL is the HTTP URL of path on the listener of a replica's
// WebSocket URL.
func replicaURL(wsURL, path, query string) (string, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return "", err
	}
	scheme := map[string]string{"ws": "http", "wss": "https"}[u.Scheme]
	if scheme == "" || u.Host == "" {
		return "", fmt.Errorf("%q: want a ws:// or wss:// URL with a host", wsURL)
	}
	return (&url.URL{Scheme: scheme, Host: u.Host, Path: path, RawQuery: query}).String(), nil
}

// parseMembersCount reads count from a members reply,
// {"room":..,"members":[..],"count":N}. A reply without count (a server
// from before count was added, or an error body) is an error, not 0.
func parseMembersCount(body []byte) (int, error) {
	var r struct {
		Count *int `json:"count"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("members reply: %w", err)
	}
	if r.Count == nil {
		return 0, fmt.Errorf("members reply without count: %.100q", body)
	}
	if *r.Count < 0 {
		return 0, fmt.Errorf("members reply with count %d", *r.Count)
	}
	return *r.Count, nil
}

// awaitEmpty polls every replica's member count for the room, each every
// leavePollInterval, until all read 0 or ctx ends; times are from closed,
// the moment the bench started closing its connections. As soon as the
// last replica reads 0 the server is sampled ("empty"), so that the leave's
// CPU stops there.
func (b *bench) awaitEmpty(ctx context.Context, closed time.Time, srv *serverProbe) *leaveReport {
	client := &http.Client{
		Timeout:   leavePollTimeout,
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1}, // straight to the replica, as the WebSockets
	}
	defer client.CloseIdleConnections()
	lr := &leaveReport{}
	seen := map[string]bool{}
	for _, u := range b.cfg.urls {
		m, err := membersURL(u, b.cfg.room)
		if err != nil {
			lr.Replicas = append(lr.Replicas, leaveReplica{URL: u, Errors: 1, LastError: err.Error()})
			continue
		}
		if !seen[m] {
			seen[m] = true
			lr.Replicas = append(lr.Replicas, leaveReplica{URL: m})
		}
	}
	var wg sync.WaitGroup
	for i := range lr.Replicas {
		if lr.Replicas[i].Errors > 0 {
			continue // no URL to poll
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pollEmpty(ctx, client, &lr.Replicas[i], closed)
		}()
	}
	wg.Wait()
	srv.sample("empty")
	lr.Empty = len(lr.Replicas) > 0
	for _, r := range lr.Replicas {
		lr.Empty = lr.Empty && r.Empty
		lr.EmptyMs = max(lr.EmptyMs, r.EmptyMs)
	}
	if !lr.Empty {
		lr.EmptyMs = 0
	}
	return lr
}

// pollEmpty asks one replica for the member count until it is 0 or ctx
// ends. It owns r until it returns.
func pollEmpty(ctx context.Context, client *http.Client, r *leaveReplica, closed time.Time) {
	tick := time.NewTicker(leavePollInterval)
	defer tick.Stop()
	for {
		n, err := fetchMembersCount(ctx, client, r.URL)
		if err != nil {
			if ctx.Err() != nil {
				return // the run's end, not the replica's error
			}
			r.Errors++
			r.LastError = err.Error()
		} else {
			if r.Polls == 0 {
				r.FirstCount = n
			}
			r.Polls++
			r.LastCount = n
			if n == 0 {
				r.Empty = true
				r.EmptyMs = ms(time.Since(closed))
				return
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

func fetchMembersCount(ctx context.Context, client *http.Client, u string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMembersReply))
	if err != nil {
		return 0, fmt.Errorf("reading the members reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HTTP %d: %.100s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return parseMembersCount(body)
}
