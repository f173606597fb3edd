#if canImport(Glibc)
import Glibc
#endif
import NIOPosix
import Synchronization

/// A small pool of libpq connections, each used on one of the pool's own threads, never on an event loop.
///
/// Connections are made lazily and dropped when libpq reports them broken, so after a Postgres outage the
/// pool reconnects on the next request without a restart.
final class PostgresPool: Sendable {
    let conninfo: String
    let size: Int
    /// Each statement's timeout on the pool's connections (nil: none).
    let timeout: Duration?
    private let threads: NIOThreadPool
    private let idle = Mutex<[(connection: UnsafeTransfer<PostgresConnection>, since: ContinuousClock.Instant)]>([])
    /// A connection idle longer than this is checked with a trivial query before it is used again.
    private let validateAfter = Duration.seconds(30)
    private let closed = Atomic<Bool>(false)

    init(conninfo: String, size: Int, timeout: Duration? = nil) {
        self.conninfo = conninfo
        self.size = max(1, size)
        self.timeout = timeout
        self.threads = NIOThreadPool(numberOfThreads: self.size)
        self.threads.start()
    }

    /// Runs `body` with a healthy connection on a pool thread.
    func withConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await threads.run(ifOpen: !closed.load(ordering: .relaxed)) { [self] in
            let connection = try checkout()
            defer {
                if connection.isHealthy, !closed.load(ordering: .relaxed) {
                    idle.withLock { $0.append((UnsafeTransfer(connection), .now)) }
                } else {
                    // A broken connection (a server restart, a network cut) means the idle ones are
                    // most likely broken too: drop them and connect afresh on the next use.
                    idle.withLock { $0.removeAll() }
                }
            }
            return try body(connection)
        }
    }

    /// The most recently used idle connection that still answers, or a new one.
    private func checkout() throws -> PostgresConnection {
        while let (candidate, since) = idle.withLock({ $0.popLast() }) {
            let connection = candidate.value
            // Reading what the server sent notices a connection it terminated (restart, idle kill) for free.
            guard connection.isUsable else { continue }
            if ContinuousClock.now - since < validateAfter { return connection }
            // Idle for a while: the server may have restarted or dropped it.
            if (try? connection.execute("SELECT 1")) != nil, connection.isHealthy { return connection }
        }
        return try PostgresConnection(conninfo: conninfo, timeout: timeout)
    }

    /// Runs `body` inside BEGIN … COMMIT; rolls back when it throws.
    func transaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await withConnection { db in try db.transaction { try body(db) } }
    }

    func close() async {
        closed.store(true, ordering: .relaxed)
        try? await threads.shutdownGracefully()
        idle.withLock { $0.removeAll() }
    }
}
