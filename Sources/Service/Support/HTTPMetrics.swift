import Prometheus
import Synchronization

/// Request counters and latency histograms in the Prometheus registry served at `/api/metrics`.
public struct HTTPMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let series = Series()
    private static let buckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5),
    ]

    /// The counter and histogram of each (method, route, status), looked up once instead of per request.
    private final class Series: Sendable {
        struct Key: Hashable {
            var method: String
            var route: String
            var status: Int
        }
        let cache = Mutex<[Key: (Counter, DurationHistogram)]>([:])
    }

    private let messagesStored: Counter

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        messagesStored = registry.makeCounter(name: "chat_messages_stored_total", help: "chat messages stored")
    }

    func record(method: String, route: String, status: Int, duration: Duration) {
        let key = Series.Key(method: method, route: route, status: status)
        let (counter, histogram) = series.cache.withLock { cache in
            if let found = cache[key] { return found }
            let made = (
                registry.makeCounter(
                    name: "http_requests_total", labels: [("method", method), ("route", route), ("status", String(status))],
                    help: "HTTP requests answered"
                ),
                registry.makeDurationHistogram(
                    name: "http_request_duration_seconds", labels: [("method", method), ("route", route)], buckets: Self.buckets,
                    help: "HTTP request latency"
                )
            )
            // Routes are the registered patterns, so the number of series is bounded.
            cache[key] = made
            return made
        }
        counter.increment()
        histogram.record(duration)
    }

    func messageStored() {
        messagesStored.increment()
    }
}
