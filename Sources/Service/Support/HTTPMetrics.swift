import Prometheus

/// Request counters and latency histograms in the Prometheus registry served at `/api/metrics`.
public struct HTTPMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private static let buckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5),
    ]

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func record(method: String, route: String, status: Int, duration: Duration) {
        registry.makeCounter(
            name: "http_requests_total", labels: [("method", method), ("route", route), ("status", String(status))],
            help: "HTTP requests answered"
        ).increment()
        registry.makeDurationHistogram(
            name: "http_request_duration_seconds", labels: [("method", method), ("route", route)], buckets: Self.buckets,
            help: "HTTP request latency"
        ).record(duration)
    }

    func messageStored() {
        registry.makeCounter(name: "chat_messages_stored_total", help: "chat messages stored").increment()
    }
}
