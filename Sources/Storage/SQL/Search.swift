#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A full-text query in the one syntax both databases are searched with: words and `"quoted phrases"` that
/// must all occur, `word*` for words starting so, and `-word` or `-"phrase"` for what must not occur.
/// Case does not matter; punctuation separates words.
public struct SearchTerms: Sendable, Equatable {
    public struct Term: Sendable, Equatable {
        /// A word, or the words of a phrase separated by spaces.
        public var text: String
        public var prefix: Bool
        public var excluded: Bool
    }

    public var terms: [Term]

    public static let maxTerms = 16

    /// Parses `q`; the error says what is wrong with it, in words for the person who typed it.
    public static func parse(_ q: String) throws(SearchSyntaxError) -> SearchTerms {
        var terms: [Term] = []
        var rest = Substring(q)
        while true {
            rest = rest.drop { $0.isWhitespace }
            guard let first = rest.first else { break }
            var excluded = false
            if first == "-" {
                excluded = true
                rest = rest.dropFirst()
            }
            var prefix = false
            let text: Substring
            if rest.first == "\"" {
                rest = rest.dropFirst()
                guard let close = rest.firstIndex(of: "\"") else { throw SearchSyntaxError("a quoted phrase is not closed: add the closing \"") }
                text = rest[..<close]
                rest = rest[rest.index(after: close)...]
            } else {
                let end = rest.firstIndex { $0.isWhitespace || $0 == "\"" } ?? rest.endIndex
                var word = rest[..<end]
                rest = rest[end...]
                if word.hasSuffix("*") {
                    prefix = true
                    word = word.dropLast()
                }
                if word.contains("*") { throw SearchSyntaxError("* must end a word: write hel* to find hello and help") }
                text = word
            }
            // Words are runs of letters and digits; a term with none (punctuation only) is ignored.
            let words = text.split { !($0.isLetter || $0.isNumber) }.map { $0.lowercased() }
            guard !words.isEmpty else {
                if prefix { throw SearchSyntaxError("* must end a word: write hel* to find hello and help") }
                continue
            }
            if prefix, words.count > 1 || text.contains(where: { !($0.isLetter || $0.isNumber) }) {
                throw SearchSyntaxError("* may end a single word of letters and digits only")
            }
            terms.append(Term(text: words.joined(separator: " "), prefix: prefix, excluded: excluded))
            guard terms.count <= maxTerms else { throw SearchSyntaxError("at most \(maxTerms) words or phrases") }
        }
        guard terms.contains(where: { !$0.excluded }) else {
            throw SearchSyntaxError(terms.isEmpty ? "type at least one word to search for" : "search for at least one word that is not excluded with -")
        }
        return SearchTerms(terms: terms)
    }

    /// The query as an SQLite FTS5 expression: each term a quoted string (a phrase of its words), `*` after
    /// a prefix, the excluded ones after `NOT`. Every word is quoted, so nothing in it is FTS5 syntax.
    var fts5: String {
        func quoted(_ term: Term) -> String { "\"\(term.text)\"" + (term.prefix ? "*" : "") }
        let wanted = terms.filter { !$0.excluded }.map(quoted).joined(separator: " AND ")
        return terms.filter(\.excluded).reduce("(\(wanted))") { "\($0) NOT \(quoted($1))" }
    }

    /// The query as a Postgres tsquery expression over parameters `$first…` (returned in order): a phrase
    /// query of each term's words, a prefix query `word:*` for a prefix (letters and digits only), `!!` before
    /// the excluded ones, all joined with `&&`.
    func tsquery(firstParameter first: Int) -> (sql: String, params: [SQLValue]) {
        var parts: [String] = []
        var params: [SQLValue] = []
        for term in terms {
            let n = first + params.count
            let query = term.prefix ? "to_tsquery('simple', $\(n)::text)" : "phraseto_tsquery('simple', $\(n)::text)"
            params.append(.text(term.prefix ? term.text + ":*" : term.text))
            parts.append(term.excluded ? "!!\(query)" : query)
        }
        return ("(" + parts.joined(separator: " && ") + ")", params)
    }
}

public struct SearchSyntaxError: Error, Sendable, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
}

/// Where a page of search results ends: the next page starts after this rank and id.
public struct SearchCursor: Sendable, Equatable {
    /// Lower ranks come first (the best match has the lowest).
    public var rank: Double
    public var id: UUID

    public init(rank: Double, id: UUID) {
        self.rank = rank
        self.id = id
    }
}

/// A search over the messages of the sessions `reader` owns or is assigned (every session when nil), or of
/// one session.
public struct MessageSearch: Sendable {
    public var terms: SearchTerms
    public var reader: UUID?
    public var sessionId: UUID?
    public var after: SearchCursor?
    public var limit: Int

    public init(terms: SearchTerms, reader: UUID?, sessionId: UUID? = nil, after: SearchCursor? = nil, limit: Int = 20) {
        self.terms = terms
        self.reader = reader
        self.sessionId = sessionId
        self.after = after
        self.limit = limit
    }
}

/// A message found, best first, with the part of its text that matched.
public struct SearchHit: Sendable, Equatable {
    public var message: ChatMessage
    /// Lower is better.
    public var rank: Double
    /// Text around the matches; each match is between `SearchHit.matchStart` and `SearchHit.matchEnd`.
    public var snippet: String

    /// Where the page after this hit starts.
    public var cursor: SearchCursor { SearchCursor(rank: rank, id: message.id) }

    public static let matchStart: Character = "\u{E000}"
    public static let matchEnd: Character = "\u{E001}"
}

/// A page of search results and whether more follow.
public struct SearchPage: Sendable, Equatable {
    public var hits: [SearchHit]
    public var hasMore: Bool
}

/// What differs in a search between SQLite (FTS5, the `message_search` index) and Postgres (the `search`
/// tsvector column): the ranked matches, and the snippets of a page of them.
struct SearchSQL: Sendable {
    /// A subquery of `(rid, r)`: the index key of each matching message and its rank (lower is better), with its
    /// parameters from `$1`; `key` is the messages' column `rid` joins on.
    let matches: @Sendable (SearchTerms) -> (sql: String, params: [SQLValue])
    let key: String
    /// `(rid, snippet)` of the messages whose keys are bound after the query's parameters, `count` of them.
    let snippets: @Sendable (SearchTerms, _ count: Int) -> (sql: String, params: [SQLValue])

    static let sqlite = SearchSQL(
        matches: { terms in
            ("SELECT rowid AS rid, bm25(message_search) AS r FROM message_search WHERE message_search MATCH $1", [.text(terms.fts5)])
        },
        key: "rowid",
        snippets: { terms, count in
            (
                """
                SELECT rowid, snippet(message_search, 0, char(57344), char(57345), '…', 24) FROM message_search
                WHERE message_search MATCH $1 AND rowid IN (\(SQL.placeholders(count, after: 1)))
                """, [.text(terms.fts5)]
            )
        }
    )

    static let postgres = SearchSQL(
        matches: { terms in
            let query = terms.tsquery(firstParameter: 1)
            return ("SELECT id AS rid, -ts_rank(search, \(query.sql))::float8 AS r FROM chat_messages WHERE search @@ \(query.sql)", query.params)
        },
        key: "id",
        snippets: { terms, count in
            let query = terms.tsquery(firstParameter: 1)
            return (
                """
                SELECT id, ts_headline('simple', content, \(query.sql),
                    'StartSel=' || chr(57344) || ', StopSel=' || chr(57345) || ', MaxWords=30, MinWords=12, ShortWord=0, MaxFragments=2, FragmentDelimiter=" … "')
                FROM chat_messages WHERE id IN (\(SQL.placeholders(count, after: query.params.count)))
                """, query.params
            )
        }
    )
}
