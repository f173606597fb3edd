#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// RFC 3339 timestamps in UTC with milliseconds (`2026-01-02T03:04:05.678Z`), the one format used
/// on the wire and in the databases' text columns.
public enum Timestamp {
    /// Formats a date as RFC 3339 UTC with milliseconds.
    public static func format(_ date: Date) -> String {
        String(unsafeUninitializedCapacity: 24) { out in
            write(date, into: out)
            return 24
        }
    }

    /// Writes the 24 bytes of `format(date)` to the start of `out`, with no allocation (JSON responses).
    public static func write(_ date: Date, into out: UnsafeMutableBufferPointer<UInt8>) {
        // Clamped to years 0001-9999, so no input can trap the conversion.
        let millis1970 = min(max(date.timeIntervalSince1970 * 1000, -62_135_596_800_000), 253_402_300_799_999)
        let totalMillis = Int64(millis1970.rounded(.down))
        let seconds = totalMillis >= 0 ? totalMillis / 1000 : (totalMillis - 999) / 1000
        let millis = Int(totalMillis - seconds * 1000)
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let secondOfDay = Int(seconds - days * 86400)
        let (year, month, day) = civil(days: days)
        func put(_ value: Int, _ width: Int, at start: Int, then separator: UInt8) {
            var v = value
            for p in stride(from: start + width - 1, through: start, by: -1) {
                out[p] = UInt8(48 + v % 10)
                v /= 10
            }
            out[start + width] = separator
        }
        put(Int(year), 4, at: 0, then: UInt8(ascii: "-"))
        put(month, 2, at: 5, then: UInt8(ascii: "-"))
        put(day, 2, at: 8, then: UInt8(ascii: "T"))
        put(secondOfDay / 3600, 2, at: 11, then: UInt8(ascii: ":"))
        put(secondOfDay / 60 % 60, 2, at: 14, then: UInt8(ascii: ":"))
        put(secondOfDay % 60, 2, at: 17, then: UInt8(ascii: "."))
        put(millis, 3, at: 20, then: UInt8(ascii: "Z"))
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`); a day past
    /// the end of its month carries into the next, as `timegm` does.
    static func days(year: Int64, month: Int, day: Int) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = Int64((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1)
        return era * 146_097 + yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear - 719_468
    }

    /// The date of a day counted from 1970-01-01 (`civil_from_days`).
    public static func civil(days: Int64) -> (year: Int64, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = Int(dayOfYear - (153 * mp + 2) / 5 + 1)
        let month = Int(mp < 10 ? mp + 3 : mp - 9)
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// The UTC day of a date, counted from 1970-01-01.
    public static func days(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 / 86_400).rounded(.down))
    }

    /// A day counted from 1970-01-01 as `YYYY-MM-DD`.
    public static func dayString(_ days: Int64) -> String {
        let (year, month, day) = civil(days: days)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(year)-\(two(month))-\(two(day))"
    }

    /// Parses RFC 3339 (`Z` or `±hh:mm`, optional fraction). Returns nil when malformed.
    public static func parse(_ text: String) -> Date? {
        var text = text
        return text.withUTF8(parse)
    }

    private static func parse(_ b: UnsafeBufferPointer<UInt8>) -> Date? {
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
        let epoch = days(year: Int64(year), month: month, day: day) * 86400 + Int64(hour * 3600 + minute * 60 + second)
        return Date(timeIntervalSince1970: Double(epoch - Int64(offset)) + fraction)
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
