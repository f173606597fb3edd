#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import CSQLite
import Synchronization

/// Time-ordered UUIDs (RFC 9562 version 7) that also sort in creation order within one process:
/// ids made in the same millisecond use a counter in the random bits (method 1 of RFC 9562 §6.2).
public enum UUIDv7 {
    private struct State {
        var millis: UInt64 = 0
        var counter: UInt16 = 0
        /// Random bits, fetched 4 KiB at a time (not two system calls per id).
        var pool = [UInt64](repeating: 0, count: 512)
        var used = 512

        mutating func random() -> UInt64 {
            if used == pool.count {
                // SQLite's generator (ChaCha20, seeded from the operating system), one call per refill.
                pool.withUnsafeMutableBytes { sqlite3_randomness(Int32($0.count), $0.baseAddress) }
                used = 0
            }
            defer { used += 1 }
            return pool[used]
        }
    }
    private static let state = Mutex(State())

    /// The id of a message not yet stored: the store gives it its id (in commit order).
    public static let unassigned = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))

    /// Makes a new UUIDv7, strictly greater than any made before by this process.
    public static func make(now: Date = Date()) -> UUID {
        let (millis, counter, randB) = state.withLock { s -> (UInt64, UInt16, UInt64) in
            var ms = UInt64(max(0, now.timeIntervalSince1970 * 1000))
            if ms <= s.millis {
                ms = s.millis
                if s.counter >= 0x0FFF {
                    ms += 1
                    s.counter = UInt16(truncatingIfNeeded: s.random() & 0x01FF)
                } else {
                    s.counter += 1
                }
            } else {
                s.counter = UInt16(truncatingIfNeeded: s.random() & 0x01FF)
            }
            s.millis = ms
            return (ms, s.counter, s.random())
        }
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

    /// The smallest version-7 id of the millisecond `date`: every id made at or after it sorts after it.
    public static func cursor(at date: Date) -> UUID {
        let millis = UInt64(max(0, date.timeIntervalSince1970 * 1000))
        return UUID(uuid: (
            UInt8(truncatingIfNeeded: millis >> 40), UInt8(truncatingIfNeeded: millis >> 32),
            UInt8(truncatingIfNeeded: millis >> 24), UInt8(truncatingIfNeeded: millis >> 16),
            UInt8(truncatingIfNeeded: millis >> 8), UInt8(truncatingIfNeeded: millis),
            0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0
        ))
    }

    /// The creation time a version-7 id carries (millisecond precision).
    public static func date(of id: UUID) -> Date {
        let b = id.uuid
        let millis = [b.0, b.1, b.2, b.3, b.4, b.5].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return Date(timeIntervalSince1970: Double(millis) / 1000)
    }
}

private let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

extension UUID {
    /// Lowercase canonical text, the form stored in the databases and sent on the wire.
    public var lowercased: String {
        withUnsafeBytes(of: uuid) { raw in
            String(unsafeUninitializedCapacity: 36) { out in
                var j = 0
                for (i, b) in raw.enumerated() {
                    if i == 4 || i == 6 || i == 8 || i == 10 {
                        out[j] = UInt8(ascii: "-")
                        j += 1
                    }
                    out[j] = hexDigits[Int(b >> 4)]
                    out[j + 1] = hexDigits[Int(b & 0x0F)]
                    j += 2
                }
                return 36
            }
        }
    }

    /// Parses the canonical 36-character form (either case); nil otherwise.
    public init?(text: some StringProtocol) {
        let parsed = text.utf8.withContiguousStorageIfAvailable { UUID.parse($0) }
            ?? Array(text.utf8).withUnsafeBufferPointer { UUID.parse($0) }
        guard let parsed else { return nil }
        self = parsed
    }

    private static func parse(_ b: UnsafeBufferPointer<UInt8>) -> UUID? {
        guard b.count == 36, b[8] == 45, b[13] == 45, b[18] == 45, b[23] == 45 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var uuid: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        let complete = withUnsafeMutableBytes(of: &uuid) { bytes -> Bool in
            var i = 0
            for k in 0..<16 {
                if i == 8 || i == 13 || i == 18 || i == 23 { i += 1 }
                guard let hi = nibble(b[i]), let lo = nibble(b[i + 1]) else { return false }
                bytes[k] = hi << 4 | lo
                i += 2
            }
            return true
        }
        return complete ? UUID(uuid: uuid) : nil
    }
}
