/// A streaming `multipart/form-data` reader (RFC 7578, RFC 2046 §5.1): bytes go in as they arrive, the
/// parts come out as events, part data a piece at a time; nothing holds more than a part's headers and
/// the few bytes that could begin a delimiter.
struct MultipartReader {
    enum Event: Equatable {
        /// A part begins, with its header fields (names lowercased).
        case part([String: String])
        case data([UInt8])
        /// The current part ended.
        case partEnd
    }

    enum State { case preamble, afterDelimiter, headers, body, epilogue }

    /// The largest header section of one part.
    static let maxHeaderBytes = 8 * 1024
    /// Parts a body may have.
    static let maxParts = 16

    private let delimiter: [UInt8]
    private var buffer: [UInt8]
    private(set) var state = State.preamble
    private var parts = 0

    /// `boundary` from the Content-Type (`multipart/form-data; boundary=…`), 1 to 70 characters.
    init?(boundary: String) {
        // RFC 2046 §5.1.1: printable, spaces allowed except at the end.
        guard (1...70).contains(boundary.utf8.count), boundary.utf8.allSatisfy({ $0 >= 32 && $0 < 127 }), boundary.utf8.last != 32 else { return nil }
        delimiter = Array("\r\n--\(boundary)".utf8)
        // The first delimiter may open the body without the line break before it.
        buffer = [13, 10]
    }

    /// The boundary of a `multipart/form-data` Content-Type, nil for any other type.
    static func boundary(contentType: String) -> String? {
        let parameters = contentType.split(separator: ";")
        guard let type = parameters.first, type.trimmingCharacters(in: " \t").lowercased() == "multipart/form-data" else { return nil }
        for parameter in parameters.dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1)
            guard pair.count == 2, pair[0].trimmingCharacters(in: " \t").lowercased() == "boundary" else { continue }
            var value = pair[1].trimmingCharacters(in: " \t")
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = value.dropFirst().dropLast() }
            return String(value)
        }
        return nil
    }

    /// Whether the closing delimiter was read.
    var isComplete: Bool { state == .epilogue }

    /// Consumes `bytes`, returning the events they complete.
    mutating func feed(_ bytes: some Collection<UInt8>) throws(MultipartError) -> [Event] {
        if state == .epilogue { return [] }
        buffer.append(contentsOf: bytes)
        var events: [Event] = []
        var start = 0
        loop: while true {
            switch state {
            case .preamble:
                guard let found = find(delimiter, from: start) else {
                    // Keep what could be the start of the delimiter.
                    start = max(start, buffer.count - (delimiter.count - 1))
                    break loop
                }
                start = found + delimiter.count
                state = .afterDelimiter
            case .afterDelimiter:
                // `--` closes the body; otherwise optional blanks, then a line break, then a part's headers.
                guard buffer.count - start >= 2 else { break loop }
                if buffer[start] == UInt8(ascii: "-") && buffer[start + 1] == UInt8(ascii: "-") {
                    state = .epilogue
                    start = buffer.count
                    break loop
                }
                var i = start
                while i < buffer.count, buffer[i] == 32 || buffer[i] == 9 { i += 1 }
                guard buffer.count - i >= 2 else {
                    if i - start > 64 { throw .malformed("blanks after a boundary") }
                    break loop
                }
                guard buffer[i] == 13, buffer[i + 1] == 10 else { throw .malformed("a boundary line must end with CRLF") }
                parts += 1
                if parts > Self.maxParts { throw .malformed("more than \(Self.maxParts) parts") }
                start = i + 2
                state = .headers
            case .headers:
                var headerEnd: Int?
                if buffer.count - start >= 2, buffer[start] == 13, buffer[start + 1] == 10 {
                    headerEnd = start  // no header fields
                } else {
                    headerEnd = find([13, 10, 13, 10], from: start).map { $0 + 2 }
                }
                guard let end = headerEnd else {
                    if buffer.count - start > Self.maxHeaderBytes { throw .malformed("a part's headers are longer than \(Self.maxHeaderBytes) bytes") }
                    break loop
                }
                if end - start > Self.maxHeaderBytes { throw .malformed("a part's headers are longer than \(Self.maxHeaderBytes) bytes") }
                events.append(.part(try Self.headerFields(buffer[start..<end])))
                start = end + 2
                state = .body
            case .body:
                if let found = find(delimiter, from: start) {
                    if found > start { events.append(.data(Array(buffer[start..<found]))) }
                    events.append(.partEnd)
                    start = found + delimiter.count
                    state = .afterDelimiter
                } else {
                    let safe = buffer.count - (delimiter.count - 1)
                    if safe > start {
                        events.append(.data(Array(buffer[start..<safe])))
                        start = safe
                    }
                    break loop
                }
            case .epilogue:
                start = buffer.count
                break loop
            }
        }
        buffer.removeFirst(min(start, buffer.count))
        return events
    }

    /// The first position at or after `from` where `needle` occurs in the buffer.
    private func find(_ needle: [UInt8], from: Int) -> Int? {
        guard buffer.count - from >= needle.count, let first = needle.first else { return nil }
        return buffer.withUnsafeBufferPointer { haystack in
            var i = from
            let last = haystack.count - needle.count
            while i <= last {
                guard let hit = haystack[i...last].firstIndex(of: first) else { return nil }
                var j = 1
                while j < needle.count, haystack[hit + j] == needle[j] { j += 1 }
                if j == needle.count { return hit }
                i = hit + 1
            }
            return nil
        }
    }

    /// `Name: value` lines (CRLF-separated), names lowercased; folded or malformed lines are refused.
    static func headerFields(_ bytes: ArraySlice<UInt8>) throws(MultipartError) -> [String: String] {
        var fields: [String: String] = [:]
        let text = String(decoding: bytes, as: UTF8.self)
        for line in text.split(separator: "\r\n", omittingEmptySubsequences: true) {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex, line.first != " ", line.first != "\t" else {
                throw .malformed("a part header is not 'Name: value'")
            }
            fields[line[..<colon].lowercased()] = String(line[line.index(after: colon)...].trimmingCharacters(in: " \t"))
        }
        return fields
    }

    /// The parameters of a `Content-Disposition` value (`form-data; name="file"; filename="a.png"`),
    /// names lowercased, quoted strings unquoted; `filename*` (RFC 8187, UTF-8) decoded into `filename*`.
    static func dispositionParameters(_ value: String) -> (type: String, parameters: [String: String]) {
        var parameters: [String: String] = [:]
        var scalars = Substring(value)
        func skipBlanks() { while let c = scalars.first, c == " " || c == "\t" { scalars.removeFirst() } }
        let type = scalars.prefix { $0 != ";" }
        scalars = scalars.dropFirst(type.count)
        while !scalars.isEmpty {
            scalars.removeFirst()  // ";"
            skipBlanks()
            let name = scalars.prefix { $0 != "=" && $0 != ";" }
            scalars = scalars.dropFirst(name.count)
            var parameterValue = ""
            if scalars.first == "=" {
                scalars.removeFirst()
                skipBlanks()
                if scalars.first == "\"" {
                    scalars.removeFirst()
                    while let c = scalars.first, c != "\"" {
                        scalars.removeFirst()
                        if c == "\\", let escaped = scalars.first {
                            parameterValue.append(escaped)
                            scalars.removeFirst()
                        } else {
                            parameterValue.append(c)
                        }
                    }
                    if !scalars.isEmpty { scalars.removeFirst() }
                    scalars = scalars.drop { $0 != ";" }
                } else {
                    let raw = scalars.prefix { $0 != ";" }
                    scalars = scalars.dropFirst(raw.count)
                    parameterValue = String(raw.trimmingCharacters(in: " \t"))
                }
            }
            let key = name.trimmingCharacters(in: " \t").lowercased()
            if key == "filename*" {
                // charset'language'percent-encoded: only UTF-8 is taken.
                let pieces = parameterValue.split(separator: "'", maxSplits: 2, omittingEmptySubsequences: false)
                if pieces.count == 3, pieces[0].lowercased() == "utf-8", let decoded = percentDecoded(pieces[2]) { parameters[key] = decoded }
            } else if !key.isEmpty {
                parameters[key] = parameterValue
            }
        }
        return (String(type.trimmingCharacters(in: " \t")).lowercased(), parameters)
    }

    private static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var utf8 = text.utf8.makeIterator()
        while let c = utf8.next() {
            if c == UInt8(ascii: "%") {
                guard let h = utf8.next(), let l = utf8.next(), let value = UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16) else { return nil }
                bytes.append(value)
            } else {
                bytes.append(c)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

enum MultipartError: Error, Equatable {
    case malformed(String)
}
