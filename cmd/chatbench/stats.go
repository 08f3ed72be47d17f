package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"time"
)

// bitset is a fixed-size set of small non-negative integers.
type bitset []uint64

func newBitset(n int) bitset      { return make(bitset, (n+63)/64) }
func (b bitset) set(i int)        { b[i/64] |= 1 << (uint(i) % 64) }
func (b bitset) has(i int) bool   { return b != nil && b[i/64]&(1<<(uint(i)%64)) != 0 }
func (b bitset) count() (n int64) { return b.andNotCount(nil) }
func (b bitset) andNotCount(o bitset) (n int64) {
	for i, w := range b {
		if i < len(o) {
			w &^= o[i]
		}
		n += int64(bits.OnesCount64(w))
	}
	return n
}

// histogram is a log-linear latency histogram in nanoseconds: values below
// 64 ns are exact, above that each power of two is split into 32 buckets,
// so a reported percentile is within about 3% of the true value.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    float64
	min    int64
	max    int64
}

const (
	histSub     = 32
	histMaxBits = 41                          // values are clamped below 2^41 ns (about 36 minutes)
	histBuckets = (histMaxBits - 4) * histSub // bucketOf(2^41-1) = 36*32+31
)

func bucketOf(v int64) int {
	if v < 2*histSub {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 6 // keep the top 6 bits: 32..63
	return (e+1)*histSub + int(uint64(v)>>uint(e)) - histSub
}

// bucketMid is the middle of bucket i, the value a percentile reports.
func bucketMid(i int) int64 {
	if i < 2*histSub {
		return int64(i)
	}
	e := i/histSub - 1
	low := int64(i%histSub+histSub) << uint(e)
	return low + (int64(1)<<uint(e))/2
}

func (h *histogram) record(v int64) {
	if v < 0 {
		v = 0 // clock steps; one host, so rare
	}
	if v >= 1<<histMaxBits {
		v = 1<<histMaxBits - 1
	}
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.counts[bucketOf(v)]++
	h.n++
	h.sum += float64(v)
}

func (h *histogram) merge(o *histogram) {
	if o == nil || o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// quantile returns the value below which a fraction q of the samples lie.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	if rank < 1 {
		rank = 1
	}
	if rank >= h.n {
		return time.Duration(h.max)
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := bucketMid(i)
			if v > h.max {
				v = h.max
			}
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}

// latencySummary is the latency part of the report.
type latencySummary struct {
	Count  uint64  `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	MinMs  float64 `json:"min_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func (h *histogram) summary() latencySummary {
	if h.n == 0 {
		return latencySummary{}
	}
	return latencySummary{
		Count:  h.n,
		MeanMs: h.sum / float64(h.n) / 1e6,
		MinMs:  ms(time.Duration(h.min)),
		P50Ms:  ms(h.quantile(0.50)),
		P90Ms:  ms(h.quantile(0.90)),
		P99Ms:  ms(h.quantile(0.99)),
		P999Ms: ms(h.quantile(0.999)),
		MaxMs:  ms(time.Duration(h.max)),
	}
}

// procSample is a process's CPU time and resident memory from /proc.
type procSample struct {
	CPU   time.Duration // utime + stime
	RSSKB int64         // VmRSS
}

// userHZ is the unit of utime/stime in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture Go supports (sysconf(_SC_CLK_TCK) needs cgo).
const userHZ = 100

// readProc reads /proc/<pid>/stat and /proc/<pid>/status; pid "self" is this
// process.
func readProc(pid string) (procSample, error) {
	var s procSample
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return s, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields after the last ')'. utime and stime are fields 14, 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, fmt.Errorf("/proc/%s/stat: unexpected format", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("/proc/%s/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return s, fmt.Errorf("/proc/%s/stat: bad utime/stime", pid)
	}
	s.CPU = time.Duration(utime+stime) * time.Second / userHZ

	status, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return s, err
	}
	defer status.Close()
	sc := bufio.NewScanner(status)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest) // "12345 kB"
			if len(fields) > 0 {
				s.RSSKB, _ = strconv.ParseInt(fields[0], 10, 64)
			}
			break
		}
	}
	return s, sc.Err()
}
