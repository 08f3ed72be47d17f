package chat

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics updated on hot paths are plain collectors; the node's counters are
// read by the GaugeFuncs at scrape time, so fan-out pays nothing for them.
var metrics = struct {
	publishSeconds prometheus.Histogram
	brokerErrors   prometheus.Counter

	storeWriteSeconds prometheus.Histogram
	storeErrors       prometheus.Counter
	storeDeferred     prometheus.Counter
	storeCopied       prometheus.Counter
	storeGap          prometheus.Counter
}{
	publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "chat", Name: "broker_publish_seconds",
		Help:    "Latency of room publishes through the broker.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}),
	brokerErrors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "chat", Name: "broker_errors_total",
		Help: "Broker calls that failed.",
	}),
	storeWriteSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "chat", Name: "store_write_seconds",
		Help:    "Latency of the writer's batches of room messages into the store.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}),
	storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "chat", Name: "store_errors_total",
		Help: "Store calls that failed.",
	}),
	storeDeferred: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "chat", Name: "store_deferred_total",
		Help: "Messages the writer's full queue left to the sweepers.",
	}),
	storeCopied: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "chat", Name: "store_copied_total",
		Help: "Messages the sweepers copied from the broker's history into the store (their writer did not).",
	}),
	storeGap: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "chat", Name: "store_gap_messages_total",
		Help: "Acknowledged messages that never reached the store: gone from the broker's history before it could take them.",
	}),
}

var registerOnce sync.Once

// RegisterMetrics registers the service's metrics for n in Prometheus's
// default registry, which go-zero's DevServer serves at /metrics. Call it
// once per process.
func RegisterMetrics(n *Node) {
	registerOnce.Do(func() {
		stat := func(f func(Stats) int64) func() float64 {
			return func() float64 { return float64(f(n.Stats())) }
		}
		prometheus.MustRegister(
			metrics.publishSeconds,
			metrics.brokerErrors,
			metrics.storeWriteSeconds,
			metrics.storeErrors,
			metrics.storeDeferred,
			metrics.storeCopied,
			metrics.storeGap,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "chat", Name: "connections", Help: "Open WebSocket connections on this node."},
				stat(func(s Stats) int64 { return s.Connections })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "chat", Name: "rooms", Help: "Rooms with members on this node."},
				stat(func(s Stats) int64 { return s.Rooms })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "chat", Name: "messages_received_total", Help: "Room and direct messages received from clients and the REST API."},
				stat(func(s Stats) int64 { return s.Received })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "chat", Name: "events_delivered_total", Help: "Events queued to connections."},
				stat(func(s Stats) int64 { return s.Delivered })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "chat", Name: "slow_consumer_closes_total", Help: "Connections closed with 4008 as slow consumers."},
				stat(func(s Stats) int64 { return s.SlowConsumers })),
		)
	})
}
