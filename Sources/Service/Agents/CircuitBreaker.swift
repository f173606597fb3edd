#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Synchronization

/// Stops calling an agent after `failures` failures in a row; after `cooldown` one trial call is let
/// through (half-open): its success closes the breaker, its failure opens it again.
final class CircuitBreaker: Sendable {
    private struct State {
        var failures = 0
        var openUntil: ContinuousClock.Instant?
        var trialRunning = false
    }

    let settings: BreakerSettings
    private let state = Mutex(State())

    init(_ settings: BreakerSettings) {
        self.settings = settings
    }

    /// Whether a call may go ahead now; every `true` must be followed by `succeeded()` or `failed()`.
    func permit(now: ContinuousClock.Instant = .now) -> Bool {
        state.withLock { s in
            guard let until = s.openUntil else { return true }
            guard now >= until, !s.trialRunning else { return false }
            s.trialRunning = true
            return true
        }
    }

    func succeeded() {
        state.withLock { $0 = State() }
    }

    func failed(now: ContinuousClock.Instant = .now) {
        state.withLock { s in
            s.failures += 1
            if s.trialRunning || s.failures >= settings.failures {
                s.openUntil = now.advanced(by: settings.cooldown)
                s.trialRunning = false
            }
        }
    }

    /// A permitted call ended without a verdict (shutdown): it counts neither way.
    func abandoned() {
        state.withLock { $0.trialRunning = false }
    }

    var isOpen: Bool { state.withLock { $0.openUntil != nil } }

    /// `closed` (calls go through), `open` (refused until the cooldown ends) or `half_open` (the cooldown
    /// ended: the next call, or the one running, is the trial).
    func status(now: ContinuousClock.Instant = .now) -> String {
        state.withLock { s in
            guard let until = s.openUntil else { return "closed" }
            return s.trialRunning || now >= until ? "half_open" : "open"
        }
    }
}

/// What an agent did since the start, for admins: calls, failures, refusals by its breaker, recent latency.
final class AgentStats: Sendable {
    private struct State {
        var requests = 0
        var errors = 0
        var refused = 0
        var lastError: (code: String, at: Date)?
        /// The latest call durations in seconds, oldest overwritten first.
        var recent: [Double] = []
        var next = 0
    }

    static let window = 200
    private let state = Mutex(State())

    func record(_ elapsed: Duration, error: String? = nil) {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        state.withLock { s in
            s.requests += 1
            if let error {
                s.errors += 1
                s.lastError = (error, Date())
            }
            if s.recent.count < Self.window { s.recent.append(seconds) } else { s.recent[s.next] = seconds }
            s.next = (s.next + 1) % Self.window
        }
    }

    func refusedByBreaker() { state.withLock { $0.refused += 1 } }

    struct Snapshot: Sendable {
        var requests: Int
        var errors: Int
        var refused: Int
        var lastError: (code: String, at: Date)?
        /// Median and 95th percentile of the recent calls, in milliseconds; nil before the first call.
        var p50: Double?
        var p95: Double?
    }

    var snapshot: Snapshot {
        state.withLock { s in
            let sorted = s.recent.sorted()
            func quantile(_ q: Double) -> Double? {
                sorted.isEmpty ? nil : (sorted[max(0, min(sorted.count - 1, Int((q * Double(sorted.count)).rounded(.up)) - 1))] * 10_000).rounded() / 10
            }
            return Snapshot(requests: s.requests, errors: s.errors, refused: s.refused, lastError: s.lastError, p50: quantile(0.5), p95: quantile(0.95))
        }
    }
}
