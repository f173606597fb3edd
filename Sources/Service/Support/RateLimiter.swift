#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `N` requests per window, parsed from `N/window` (`300/1m`), or off.
public struct RateLimit: Sendable, Equatable, CustomStringConvertible {
    public var limit: Int
    public var windowSeconds: Int

    public init(limit: Int, windowSeconds: Int) {
        self.limit = limit
        self.windowSeconds = windowSeconds
    }

    /// Parses `N/window` (window as in `30s`, `1m`, `1h`, or a bare `m` meaning one minute) or `off`.
    /// Returns `.some(nil)` for `off`, nil when malformed.
    public static func parse(_ text: String) -> RateLimit?? {
        let trimmed = text.trimmingWhitespace().lowercased()
        if trimmed == "off" || trimmed == "0" { return .some(nil) }
        let parts = trimmed.split(separator: "/")
        guard parts.count == 2, let limit = Int(parts[0]), limit > 0, limit <= 1_000_000 else { return nil }
        var window = String(parts[1])
        if let first = window.first, first.isLetter { window = "1" + window }
        guard let seconds = DurationText.parse(window), seconds > 0 else { return nil }
        return .some(RateLimit(limit: limit, windowSeconds: seconds))
    }

    public var description: String { "\(limit)/\(DurationText.format(windowSeconds))" }
}

/// Durations written as `30s`, `15m`, `24h`, `30d` (or plain seconds).
public enum DurationText {
    /// Seconds for a duration text; nil when malformed or above 10 years.
    public static func parse(_ text: String) -> Int? {
        let t = text.trimmingWhitespace().lowercased()
        guard let unit = t.last else { return nil }
        let multiplier: Int
        var digits = Substring(t)
        switch unit {
        case "s": multiplier = 1; digits = digits.dropLast()
        case "m": multiplier = 60; digits = digits.dropLast()
        case "h": multiplier = 3600; digits = digits.dropLast()
        case "d": multiplier = 86400; digits = digits.dropLast()
        case "0"..."9": multiplier = 1
        default: return nil
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCIIDigit), let n = Int(digits), n <= 10 * 365 * 86400 / multiplier else { return nil }
        return n * multiplier
    }

    /// The shortest exact text for a number of seconds.
    public static func format(_ seconds: Int) -> String {
        if seconds > 0, seconds % 86400 == 0 { return "\(seconds / 86400)d" }
        if seconds > 0, seconds % 3600 == 0 { return "\(seconds / 3600)h" }
        if seconds > 0, seconds % 60 == 0 { return "\(seconds / 60)m" }
        return "\(seconds)s"
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

extension String {
    /// Without leading and trailing white space (scalar by scalar: no grapheme breaking on hot paths).
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
              let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}

/// The result of taking a token from a bucket.
public struct RateDecision: Sendable {
    public var allowed: Bool
    public var limit: Int
    public var remaining: Int
    /// Seconds until a full bucket (RateLimit-Reset).
    public var resetSeconds: Int
    /// Seconds until the next token when refused (Retry-After).
    public var retryAfterSeconds: Int
}

/// Token buckets per key, kept in a bounded LRU. A bucket holds `limit` tokens and refills at
/// `limit / window` per second; an evicted bucket simply starts full again.
public final class RateLimiter: Sendable {
    private struct Bucket: Sendable {
        var tokens: Double
        var updated: Double
    }

    private let buckets: LRUCache<String, Bucket>

    public init(maxKeys: Int = 100_000) {
        self.buckets = LRUCache(maxEntries: maxKeys)
    }

    /// Seconds on a monotonic clock (since the first call): buckets refill by elapsed time, which a
    /// wall-clock step (NTP, an administrator's `date`) must neither grant nor withhold.
    public static func monotonicNow() -> Double {
        let elapsed = origin.duration(to: .now).components
        return Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
    }
    private static let origin = ContinuousClock.now

    /// Takes one token for `key` under `rule`.
    public func take(_ key: String, rule: RateLimit, now: Double = RateLimiter.monotonicNow()) -> RateDecision {
        decide(key, rule: rule, now: now, consume: true)
    }

    /// What `take` would decide, without taking a token (for limits that count failures, checked before
    /// the attempt and charged only when it fails).
    public func peek(_ key: String, rule: RateLimit, now: Double = RateLimiter.monotonicNow()) -> RateDecision {
        decide(key, rule: rule, now: now, consume: false)
    }

    /// Gives back a token taken for `key` (an attempt reserved as a failure that succeeded).
    public func give(_ key: String, rule: RateLimit) {
        buckets.update(key) { bucket in
            guard var b = bucket else { return }
            b.tokens = min(Double(rule.limit), b.tokens + 1)
            bucket = b
        }
    }

    /// Forgets `key`: its bucket is full again.
    public func reset(_ key: String) {
        buckets.remove(key)
    }

    private func decide(_ key: String, rule: RateLimit, now: Double, consume: Bool) -> RateDecision {
        let capacity = Double(rule.limit)
        let rate = capacity / Double(rule.windowSeconds)
        return buckets.update(key) { bucket in
            var b = bucket ?? Bucket(tokens: capacity, updated: now)
            b.tokens = min(capacity, b.tokens + max(0, now - b.updated) * rate)
            b.updated = now
            let allowed = b.tokens >= 1
            if allowed, consume { b.tokens -= 1 }
            if consume || bucket != nil { bucket = b }
            return RateDecision(
                allowed: allowed,
                limit: rule.limit,
                remaining: Int(b.tokens.rounded(.down)),
                resetSeconds: Int(((capacity - b.tokens) / rate).rounded(.up)),
                retryAfterSeconds: allowed ? 0 : max(1, Int(((1 - b.tokens) / rate).rounded(.up)))
            )
        }
    }
}
