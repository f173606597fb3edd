#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Synchronization

/// Time-ordered UUIDs (RFC 9562 version 7) that also sort in creation order within one process:
/// ids made in the same millisecond use a counter in the random bits (method 1 of RFC 9562 §6.2).
public enum UUIDv7 {
    private static let state = Mutex<(millis: UInt64, counter: UInt16)>((0, 0))

    /// Makes a new UUIDv7, strictly greater than any made before by this process.
    public static func make(now: Date = Date()) -> UUID {
        var rng = SystemRandomNumberGenerator()
        let (millis, counter) = state.withLock { s -> (UInt64, UInt16) in
            var ms = UInt64(max(0, now.timeIntervalSince1970 * 1000))
            if ms <= s.millis {
                ms = s.millis
                if s.counter >= 0x0FFF {
                    ms += 1
                    s.counter = UInt16.random(in: 0...0x01FF, using: &rng)
                } else {
                    s.counter += 1
                }
            } else {
                s.counter = UInt16.random(in: 0...0x01FF, using: &rng)
            }
            s.millis = ms
            return (ms, s.counter)
        }
        let randB = UInt64.random(in: 0...UInt64.max, using: &rng)
        let bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (
            UInt8(truncatingIfNeeded: millis >> 40), UInt8(truncatingIfNeeded: millis >> 32),
            UInt8(truncatingIfNeeded: millis >> 24), UInt8(truncatingIfNeeded: millis >> 16),
            UInt8(truncatingIfNeeded: millis >> 8), UInt8(truncatingIfNeeded: millis),
            0x70 | UInt8(truncatingIfNeeded: counter >> 8), UInt8(truncatingIfNeeded: counter),
            0x80 | UInt8(truncatingIfNeeded: randB >> 56 & 0x3F), UInt8(truncatingIfNeeded: randB >> 48),
            UInt8(truncatingIfNeeded: randB >> 40), UInt8(truncatingIfNeeded: randB >> 32),
            UInt8(truncatingIfNeeded: randB >> 24), UInt8(truncatingIfNeeded: randB >> 16),
            UInt8(truncatingIfNeeded: randB >> 8), UInt8(truncatingIfNeeded: randB)
        )
        return UUID(uuid: bytes)
    }
}

extension UUID {
    /// Lowercase canonical text, the form stored in the databases and sent on the wire.
    public var lowercased: String { uuidString.lowercased() }
}
