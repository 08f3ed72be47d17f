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
