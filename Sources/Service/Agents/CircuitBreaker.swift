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
}
