import CLibPQ
#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One libpq connection. Not thread-safe: used by one pool thread at a time. Statements are prepared
/// once per connection (named by a counter) and executed with bound text parameters.
final class PostgresConnection: SQLDatabase {
    private let handle: OpaquePointer
    private var prepared: [String: String] = [:]
    /// Longest wait for the answer to one statement (nil: none). A server that stops answering (a frozen
    /// host) then fails the statement instead of holding its thread; the connection, left in the middle of
    /// the statement, is no longer healthy and is never used again.
    var timeout: Duration?

    /// Connects with any libpq connection string (URI or key=value); `timeout` bounds each statement.
    init(conninfo: String, timeout: Duration? = nil) throws {
        self.timeout = timeout
        guard let conn = PQconnectdb(Self.withConnectTimeout(conninfo)) else { throw StoreError(.unavailable, "cannot allocate a Postgres connection") }
        guard PQstatus(conn) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(conn)).trimmingTrailingNewlines
            PQfinish(conn)
            throw StoreError(.unavailable, "cannot connect to Postgres", detail: message)
        }
        self.handle = conn
        // UTC text timestamps, so they parse as RFC 3339; no NOTICE chatter on stderr.
        try execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET client_min_messages TO WARNING")
    }

    deinit {
        PQfinish(handle)
    }

    /// Adds `connect_timeout=5` unless the string sets one (a host that does not answer must fail a request
    /// in seconds, not after the TCP timeout), and `application_name=chat-backend` over any the string names
    /// (the server's sessions in `pg_stat_activity`, which `copy` looks for to refuse a live database; the
    /// last value given wins) unless one of ours is set already (`copy`'s own, `chat-backend-copy`).
    static func withConnectTimeout(_ conninfo: String) -> String {
        let timed = conninfo.contains("connect_timeout") ? conninfo : with(conninfo, "connect_timeout", "5")
        return conninfo.contains("application_name=chat-backend") ? timed : with(timed, "application_name", "chat-backend")
    }

    /// The connection string with `key=value` added, in its own form (URI query or key=value pairs).
    static func with(_ conninfo: String, _ key: String, _ value: String) -> String {
        if conninfo.hasPrefix("postgres://") || conninfo.hasPrefix("postgresql://") {
            return conninfo + (conninfo.contains("?") ? "&" : "?") + "\(key)=\(value)"
        }
        return conninfo + " \(key)=\(value)"
    }

    /// Whether libpq still considers the connection usable.
    var isHealthy: Bool { PQstatus(handle) == CONNECTION_OK && PQtransactionStatus(handle) == PQTRANS_IDLE }

    /// The connection's socket, for waiting on notifications.
    var socketDescriptor: Int32 { PQsocket(handle) }

    /// Reads whatever the server sent; false when the connection is broken.
    func consumeInput() -> Bool { PQconsumeInput(handle) == 1 && PQstatus(handle) == CONNECTION_OK }

    /// Whether an idle connection can take a statement. A server that shuts down or restarts sends each
    /// client a FATAL message and closes its end; libpq notices only when a read reaches the end of the
    /// stream, which `PQconsumeInput` (stopping after the message) does not, so the socket is asked too.
    var isUsable: Bool {
        // POLLRDHUP (Linux): the peer closed its end; Glibc's module does not export it.
        let peerClosed = Int16(0x2000) | Int16(POLLHUP) | Int16(POLLERR) | Int16(POLLNVAL)
        var socket = pollfd(fd: PQsocket(handle), events: Int16(POLLIN) | Int16(0x2000), revents: 0)
        guard socket.fd >= 0, poll(&socket, 1, 0) >= 0, socket.revents & peerClosed == 0 else { return false }
        return consumeInput() && isHealthy
    }

    /// The next queued NOTIFY payload, if any.
    func nextNotification() -> String? {
        guard let notify = PQnotifies(handle) else { return nil }
        defer { PQfreemem(notify) }
        return notify.pointee.extra.map { String(cString: $0) } ?? ""
    }

    /// Server version as `15.18`.
    var serverVersion: String {
        let v = Int(PQserverVersion(handle))
        return "\(v / 10000).\(v % 10000)"
    }

    /// Runs statements without parameters (DDL, transaction control; may contain several statements).
    func execute(_ sql: String) throws {
        let result = try answer(to: PQsendQuery(handle, sql), sql: sql)
        defer { PQclear(result) }
        try check(result, sql: sql)
    }

    /// Runs one statement with bound parameters and returns its rows as text values (nil for NULL).
    @discardableResult
    func query(_ sql: String, _ params: [SQLValue] = []) throws -> [SQLRow] {
        try executePrepared(sql, params) { result in (0..<PQntuples(result)).map { Self.row(result, $0) } }
    }

    /// Row `r` of a result, every value as text.
    private static func row(_ result: OpaquePointer, _ r: Int32) -> SQLRow {
        SQLRow(values: (0..<PQnfields(result)).map { c in
            PQgetisnull(result, r, c) == 1 ? .null : .text(String(cString: PQgetvalue(result, r, c)))
        })
    }

    /// Runs a statement and returns the number of rows it affected.
    @discardableResult
    func run(_ sql: String, _ params: [SQLValue] = []) throws -> Int {
        try executePrepared(sql, params) { result in Int(String(cString: PQcmdTuples(result))) ?? 0 }
    }

    /// Prepares `sql` once per connection, executes it with `params` as text, checks the result and reads it.
    private func executePrepared<T>(_ sql: String, _ params: [SQLValue], _ read: (OpaquePointer) -> T) throws -> T {
        let name = try statementName(for: sql, parameterCount: params.count)
        let sent = withCStrings(params.map(\.pgText)) { pointers in
            PQsendQueryPrepared(handle, name, Int32(pointers.count), pointers, nil, nil, 0)
        }
        let result = try answer(to: sent, sql: sql)
        defer { PQclear(result) }
        try check(result, sql: sql)
        return read(result)
    }

    private func statementName(for sql: String, parameterCount: Int) throws -> String {
        if let name = prepared[sql] { return name }
        let name = "s\(prepared.count + 1)"
        let result = try answer(to: PQsendPrepare(handle, name, sql, Int32(parameterCount), nil), sql: sql)
        defer { PQclear(result) }
        try check(result, sql: sql)
        prepared[sql] = name
        return name
    }

    /// The result of the statement just sent (`sent`: what the `PQsend…` call returned), waiting for it at most
    /// `timeout`. As `PQexec`, the last result, or the first error when several statements were sent.
    private func answer(to sent: Int32, sql: String) throws -> OpaquePointer {
        guard sent == 1 else { throw connectionError(sql: sql) }
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var kept: OpaquePointer?
        do {
            while true {
                while PQisBusy(handle) == 1 {
                    try waitForInput(until: deadline, sql: sql)
                    guard PQconsumeInput(handle) == 1 else { throw connectionError(sql: sql) }
                }
                guard let result = PQgetResult(handle) else { break }
                if let error = kept, PQresultStatus(error) == PGRES_FATAL_ERROR {
                    PQclear(result)
                } else {
                    if let earlier = kept { PQclear(earlier) }
                    kept = result
                }
            }
        } catch {
            if let kept { PQclear(kept) }
            throw error
        }
        guard let kept else { throw connectionError(sql: sql) }
        return kept
    }

    private func waitForInput(until deadline: ContinuousClock.Instant?, sql: String) throws {
        var socket = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
        while true {
            var wait: Int32 = -1
            if let deadline {
                let left = deadline - .now
                guard left > .zero else { throw StoreError(.unavailable, "Postgres did not answer in time", sql: sql) }
                wait = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            }
            let ready = poll(&socket, 1, wait)
            if ready > 0 { return }
            if ready < 0, errno != EINTR { throw connectionError(sql: sql) }
        }
    }

    private func check(_ result: OpaquePointer, sql: String) throws {
        let status = PQresultStatus(result)
        guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY else {
            let message = String(cString: PQresultErrorMessage(result)).trimmingTrailingNewlines
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) } ?? ""
            throw StoreError(Self.kind(sqlState: state, healthy: PQstatus(handle) == CONNECTION_OK), "Postgres error", detail: "\(state) \(message)", sql: sql)
        }
    }

    private func connectionError(sql: String) -> StoreError {
        StoreError(.unavailable, "Postgres connection failed", detail: String(cString: PQerrorMessage(handle)).trimmingTrailingNewlines, sql: sql)
    }
}

/// Calls `body` with C strings for each value (nil stays a null pointer), valid for the call only.
private func withCStrings<R>(_ values: [String?], _ body: ([UnsafePointer<CChar>?]) throws -> R) rethrows -> R {
    let storage: [UnsafeMutablePointer<CChar>?] = values.map { $0.map { strdup($0) } ?? nil }
    defer { for p in storage { free(p) } }
    return try body(storage.map { UnsafePointer($0) })
}

extension String {
    var trimmingTrailingNewlines: String {
        var s = self
        while s.last == "\n" || s.last == " " { s.removeLast() }
        return s
    }
}

extension SQLValue {
    /// The parameter as Postgres text format (nil is SQL NULL).
    var pgText: String? {
        switch self {
        case .null: return nil
        case .integer(let v): return String(v)
        case .real(let d): return String(d)
        case .text(let s): return s
        case .blob(let bytes): return Hex.encode(bytes)
        }
    }
}

extension PostgresConnection {
    /// The store's error kind for a Postgres SQLSTATE (`healthy`: the connection is still up).
    static func kind(sqlState: String, healthy: Bool) -> StoreError.Kind {
        switch sqlState {
        case _ where !healthy: .unavailable
        case "23505": .conflict
        case "23503": .notFound
        case _ where ["22", "23"].contains(sqlState.prefix(2)): .invalid
        case _ where ["08", "57", "53"].contains(sqlState.prefix(2)) || ["40001", "40P01"].contains(sqlState): .unavailable
        default: .failed
        }
    }
}
