import Storage

/// A parsed configuration document (YAML or JSON) whose values remember the line they came from,
/// so errors can name both the field and the line.
indirect enum ConfigNode: Sendable {
    case scalar(String, quoted: Bool, line: Int)
    case list([ConfigNode], line: Int)
    case map([(key: String, value: ConfigNode)], line: Int)

    var line: Int {
        switch self {
        case .scalar(_, _, let line), .list(_, let line), .map(_, let line): return line
        }
    }

    /// A list or mapping written under its key is placed on the key's line (errors about it name that line).
    func placed(at line: Int) -> ConfigNode {
        switch self {
        case .scalar: self
        case .list(let items, _): .list(items, line: line)
        case .map(let fields, _): .map(fields, line: line)
        }
    }
}

/// A syntax or validation error in a configuration document.
public struct ConfigDocumentError: Error, CustomStringConvertible, Equatable {
    public var line: Int
    public var path: String
    public var message: String

    public var description: String {
        let location = line > 0 ? "line \(line): " : ""
        return path.isEmpty ? "\(location)\(message)" : "\(location)\(path): \(message)"
    }
}

/// Reads the subset of YAML that configuration files use: block mappings and sequences by indentation,
/// plain, single- and double-quoted scalars, `|`/`>` block scalars, flow sequences of scalars, and
/// comments. Anchors, aliases, tags and multiple documents are refused with the line named. A document
/// starting with `{` or `[` is read as JSON.
enum ConfigDocument {
    static func parse(_ text: String) throws -> ConfigNode {
        let trimmed = text.drop { $0 == " " || $0 == "\n" || $0 == "\r" || $0 == "\t" || $0 == "\u{FEFF}" }
        if trimmed.first == "{" || trimmed.first == "[" {
            guard let value = JSONValue.parse(String(trimmed)) else {
                throw ConfigDocumentError(line: 0, path: "", message: "not valid JSON (check commas, quotes and brackets; duplicate keys are refused)")
            }
            return node(value)
        }
        var parser = YAMLReader(text: text)
        return try parser.document()
    }

    private static func node(_ value: JSONValue) -> ConfigNode {
        switch value {
        case .null: return .scalar("null", quoted: false, line: 0)
        case .bool(let b): return .scalar(b ? "true" : "false", quoted: false, line: 0)
        case .int(let i): return .scalar(String(i), quoted: false, line: 0)
        case .double(let d): return .scalar(String(d), quoted: false, line: 0)
        case .string(let s): return .scalar(s, quoted: true, line: 0)
        case .array(let items): return .list(items.map(node), line: 0)
        case .object(let fields): return .map(fields.sorted { $0.key < $1.key }.map { ($0.key, node($0.value)) }, line: 0)
        }
    }
}

private struct YAMLReader {
    struct Line {
        var number: Int
        var indent: Int
        var text: Substring  // without indentation; comments still attached
    }

    var lines: [Line] = []
    var raw: [Substring]
    var index = 0

    init(text: String) {
        raw = text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.hasSuffix("\r") ? $0.dropLast() : $0 }
    }

    mutating func document() throws -> ConfigNode {
        for (i, rawLine) in raw.enumerated() {
            let body = rawLine.drop { $0 == " " }
            if body.first == "\t" { throw err(i + 1, "tabs are not allowed for indentation; use spaces") }
            let content = Self.stripComment(body)
            if content.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
            if i == 0 || lines.isEmpty, content == "---" { continue }
            if content == "---" || content == "..." { throw err(i + 1, "only one document per file is supported") }
            lines.append(Line(number: i + 1, indent: rawLine.count - body.count, text: body))
        }
        guard let first = lines.first else { return .map([], line: 1) }
        let value = try block(indent: first.indent)
        if index < lines.count { throw err(lines[index].number, "unexpected indentation") }
        return value
    }

    /// The text before a comment (`#` at the start or after a space, outside quotes), trailing spaces removed.
    static func stripComment(_ s: Substring) -> Substring {
        var quote: Character?
        var previous: Character = " "
        var end = s.endIndex
        for i in s.indices {
            let c = s[i]
            if let q = quote {
                if c == q { quote = nil }
            } else if c == "\"" || c == "'" {
                if previous == " " || previous == ":" || previous == "[" || previous == "," || previous == "-" { quote = c }
            } else if c == "#", previous == " " || previous == "\t" {
                end = i
                break
            }
            previous = c
        }
        var out = s[s.startIndex..<end]
        while out.last == " " || out.last == "\t" { out = out.dropLast() }
        return out
    }

    func err(_ line: Int, _ message: String) -> ConfigDocumentError {
        ConfigDocumentError(line: line, path: "", message: message)
    }

    /// A block node whose lines are indented exactly `indent`.
    mutating func block(indent: Int) throws -> ConfigNode {
        let line = lines[index]
        let content = Self.stripComment(line.text)
        if content == "-" || content.hasPrefix("- ") { return try sequence(indent: indent) }
        if Self.splitKey(content) != nil { return try mapping(indent: indent) }
        index += 1
        return try scalar(content, line: line.number)
    }

    mutating func sequence(indent: Int) throws -> ConfigNode {
        let start = lines[index].number
        var items: [ConfigNode] = []
        while index < lines.count, lines[index].indent == indent {
            let line = lines[index]
            let content = Self.stripComment(line.text)
            guard content == "-" || content.hasPrefix("- ") else { break }
            let rest = content.dropFirst().drop { $0 == " " }
            if rest.isEmpty {
                index += 1
                guard index < lines.count, lines[index].indent > indent else {
                    items.append(.scalar("null", quoted: false, line: line.number))
                    continue
                }
                items.append(try block(indent: lines[index].indent))
            } else {
                // `- key: value` starts a mapping whose keys sit at the item's content column.
                let column = indent + (content.count - rest.count)
                lines[index] = Line(number: line.number, indent: column, text: line.text.dropFirst(content.count - rest.count))
                items.append(try block(indent: column))
            }
        }
        if index < lines.count, lines[index].indent > indent { throw err(lines[index].number, "unexpected indentation") }
        return .list(items, line: start)
    }

    mutating func mapping(indent: Int) throws -> ConfigNode {
        let start = lines[index].number
        var fields: [(key: String, value: ConfigNode)] = []
        while index < lines.count, lines[index].indent == indent {
            let line = lines[index]
            let content = Self.stripComment(line.text)
            guard let (rawKey, rawValue) = Self.splitKey(content) else {
                if content == "-" || content.hasPrefix("- ") { break }
                throw err(line.number, "expected `key: value`")
            }
            let key = try unquoteKey(rawKey, line: line.number)
            if fields.contains(where: { $0.key == key }) { throw ConfigDocumentError(line: line.number, path: key, message: "duplicate key") }
            index += 1
            let value: ConfigNode
            if rawValue.isEmpty {
                if index < lines.count, lines[index].indent > indent {
                    value = try block(indent: lines[index].indent).placed(at: line.number)
                } else if index < lines.count, lines[index].indent == indent, Self.stripComment(lines[index].text).hasPrefix("- ") || Self.stripComment(lines[index].text) == "-" {
                    // A sequence may sit at its key's indentation.
                    value = try sequence(indent: indent).placed(at: line.number)
                } else {
                    value = .scalar("null", quoted: false, line: line.number)
                }
            } else if rawValue == "|" || rawValue == ">" || rawValue == "|-" || rawValue == ">-" || rawValue == "|+" || rawValue == ">+" {
                value = blockScalar(style: rawValue, parentIndent: indent, line: line.number)
            } else {
                value = try scalar(rawValue, line: line.number)
            }
            fields.append((key, value))
        }
        if index < lines.count, lines[index].indent > indent { throw err(lines[index].number, "unexpected indentation") }
        return .map(fields, line: start)
    }

    /// `key: value` or `key:`; nil when the line is not a mapping entry.
    static func splitKey(_ s: Substring) -> (Substring, Substring)? {
        if let q = s.first, q == "\"" || q == "'" {
            guard let close = s.dropFirst().firstIndex(of: q) else { return nil }
            let after = s[s.index(after: close)...]
            guard after.hasPrefix(":"), after.count == 1 || after.dropFirst().first == " " else { return nil }
            return (s[...close], after.dropFirst().drop { $0 == " " })
        }
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == ":" {
                let next = s.index(after: i)
                if next == s.endIndex || s[next] == " " {
                    let key = s[..<i]
                    guard !key.isEmpty, !key.hasPrefix("- "), key != "-" else { return nil }
                    return (key, next == s.endIndex ? "" : s[next...].drop { $0 == " " })
                }
            }
            i = s.index(after: i)
        }
        return nil
    }

    func unquoteKey(_ key: Substring, line: Int) throws -> String {
        if case .scalar(let text, _, _) = try scalar(key, line: line) { return text }
        throw err(line, "keys must be plain text")
    }

    /// The lines of a `|` or `>` block scalar (more indented than `parentIndent`; blank lines kept).
    mutating func blockScalar(style: Substring, parentIndent: Int, line: Int) -> ConfigNode {
        // Work on raw lines: blank lines and `#` inside the block are content.
        let startRaw = line  // raw index of the next line (lines are 1-based)
        var rawIndex = startRaw
        var collected: [Substring] = []
        var blockIndent: Int?
        while rawIndex < raw.count {
            let text = raw[rawIndex]
            let body = text.drop { $0 == " " }
            let lineIndent = text.count - body.count
            if body.isEmpty {
                collected.append("")
                rawIndex += 1
                continue
            }
            if lineIndent <= parentIndent { break }
            if blockIndent == nil { blockIndent = lineIndent }
            guard let blockIndent, lineIndent >= blockIndent else { break }
            collected.append(text.dropFirst(blockIndent))
            rawIndex += 1
        }
        // Skip the parsed lines that belong to the block.
        while index < lines.count, lines[index].number <= rawIndex { index += 1 }
        let chomp = style.last
        var body: String
        if style.first == ">" {
            body = ""
            for (i, piece) in collected.enumerated() {
                if i > 0 { body += (piece.isEmpty || collected[i - 1].isEmpty) ? "\n" : " " }
                body += piece
            }
        } else {
            body = collected.joined(separator: "\n")
        }
        var trimmed = body
        while trimmed.hasSuffix("\n") { trimmed.removeLast() }
        switch chomp {
        case "-": body = trimmed
        case "+": body += "\n"
        default: body = trimmed.isEmpty ? "" : trimmed + "\n"
        }
        return .scalar(body, quoted: true, line: line)
    }

    func scalar(_ s: Substring, line: Int) throws -> ConfigNode {
        guard let first = s.first else { return .scalar("null", quoted: false, line: line) }
        switch first {
        case "\"":
            guard s.count >= 2, s.last == "\"" else { throw err(line, "unterminated double-quoted string") }
            guard case .string(let value)? = JSONValue.parse(String(s)) else { throw err(line, "invalid escape in double-quoted string") }
            return .scalar(value, quoted: true, line: line)
        case "'":
            guard s.count >= 2, s.last == "'" else { throw err(line, "unterminated single-quoted string") }
            let inner = s.dropFirst().dropLast()
            var out = ""
            var i = inner.startIndex
            while i < inner.endIndex {
                let c = inner[i]
                let next = inner.index(after: i)
                if c == "'" {
                    guard next < inner.endIndex, inner[next] == "'" else { throw err(line, "a quote inside a single-quoted string is written ''") }
                    out.append("'")
                    i = inner.index(after: next)
                } else {
                    out.append(c)
                    i = next
                }
            }
            return .scalar(out, quoted: true, line: line)
        case "[":
            guard s.last == "]" else { throw err(line, "unterminated [ list (flow lists must fit on one line)") }
            return .list(try flowItems(s.dropFirst().dropLast(), line: line), line: line)
        case "{":
            throw err(line, "{ } mappings are not supported in YAML here; use indented `key: value` lines")
        case "&", "*", "!", "%", "@", "`":
            throw err(line, "anchors, aliases, tags and directives are not supported")
        case "|", ">":
            throw err(line, "a block scalar (| or >) must follow a key")
        default:
            return .scalar(String(s), quoted: false, line: line)
        }
    }

    func flowItems(_ s: Substring, line: Int) throws -> [ConfigNode] {
        var items: [ConfigNode] = []
        var quote: Character?
        var start = s.startIndex
        var i = s.startIndex
        func flush(_ end: Substring.Index) throws {
            let piece = s[start..<end].trimmingSpaces
            if piece.isEmpty { throw err(line, "empty item in [ ] list") }
            if piece.first == "[" || piece.first == "{" { throw err(line, "nested [ ] or { } inside a list is not supported") }
            items.append(try scalar(piece, line: line))
        }
        while i < s.endIndex {
            let c = s[i]
            if let q = quote {
                if c == q { quote = nil }
            } else if c == "\"" || c == "'" {
                quote = c
            } else if c == "," {
                try flush(i)
                start = s.index(after: i)
            }
            i = s.index(after: i)
        }
        if quote != nil { throw err(line, "unterminated string in [ ] list") }
        if !s[start...].trimmingSpaces.isEmpty || !items.isEmpty { try flush(s.endIndex) }
        return items
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return s
    }
}
