#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// RFC 3339 timestamps in UTC with milliseconds (`2026-01-02T03:04:05.678Z`), the one format used
/// on the wire and in the databases' text columns.
public enum Timestamp {
    /// Formats a date as RFC 3339 UTC with milliseconds.
    public static func format(_ date: Date) -> String {
        // Clamped to years 0001-9999, so no input can trap the conversion.
        let millis1970 = min(max(date.timeIntervalSince1970 * 1000, -62_135_596_800_000), 253_402_300_799_999)
        let totalMillis = Int64(millis1970.rounded(.down))
        var seconds = time_t(totalMillis >= 0 ? totalMillis / 1000 : (totalMillis - 999) / 1000)
        let millis = Int(totalMillis - Int64(seconds) * 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let fields: [(Int, Int)] = [
            (Int(parts.tm_year) + 1900, 4), (Int(parts.tm_mon) + 1, 2), (Int(parts.tm_mday), 2),
            (Int(parts.tm_hour), 2), (Int(parts.tm_min), 2), (Int(parts.tm_sec), 2), (millis, 3),
        ]
        let separators: [UInt8] = [45, 45, 84, 58, 58, 46, 90]  // - - T : : . Z
        return String(unsafeUninitializedCapacity: 24) { out in
            var j = 0
            for (k, (value, width)) in fields.enumerated() {
                var v = value
                for p in stride(from: width - 1, through: 0, by: -1) {
                    out[j + p] = UInt8(48 + v % 10)
                    v /= 10
                }
                j += width
                out[j] = separators[k]
                j += 1
            }
            return j
        }
    }

    /// Parses RFC 3339 (`Z` or `±hh:mm`, optional fraction). Returns nil when malformed.
    public static func parse(_ text: String) -> Date? {
        let b = Array(text.utf8)
        guard b.count >= 20 else { return nil }
        func num(_ from: Int, _ len: Int) -> Int? {
            guard from + len <= b.count else { return nil }
            var v = 0
            for i in from..<(from + len) {
                guard b[i] >= 48, b[i] <= 57 else { return nil }
                v = v * 10 + Int(b[i] - 48)
            }
            return v
        }
        guard let year = num(0, 4), b[4] == 45, let month = num(5, 2), b[7] == 45, let day = num(8, 2),
              b[10] == 84 || b[10] == 116 || b[10] == 32,
              let hour = num(11, 2), b[13] == 58, let minute = num(14, 2), b[16] == 58, let second = num(17, 2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var i = 19
        var fraction = 0.0
        if i < b.count, b[i] == 46 {
            i += 1
            var scale = 0.1
            let start = i
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                fraction += Double(b[i] - 48) * scale
                scale /= 10
                i += 1
            }
            guard i > start else { return nil }
        }
        var offset = 0
        guard i < b.count else { return nil }
        if b[i] == 90 || b[i] == 122 {
            i += 1
        } else if b[i] == 43 || b[i] == 45 {
            // ±hh:mm (RFC 3339), or ±hh and ±hhmm as Postgres prints them.
            guard let oh = num(i + 1, 2) else { return nil }
            var om = 0
            var length = 3
            if b.count > i + 3 {
                if b[i + 3] == 58, let m = num(i + 4, 2) {
                    om = m
                    length = 6
                } else if let m = num(i + 3, 2) {
                    om = m
                    length = 5
                } else {
                    return nil
                }
            }
            offset = (oh * 3600 + om * 60) * (b[i] == 43 ? 1 : -1)
            i += length
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        let epoch = timegm(&parts)
        return Date(timeIntervalSince1970: Double(epoch - offset) + fraction)
    }

    /// The current time truncated to whole milliseconds, so a stored and re-read value compares equal.
    public static func now() -> Date {
        truncate(Date())
    }

    /// Truncates a date to whole milliseconds.
    public static func truncate(_ date: Date) -> Date {
        Date(timeIntervalSince1970: (date.timeIntervalSince1970 * 1000).rounded(.down) / 1000)
    }
}
