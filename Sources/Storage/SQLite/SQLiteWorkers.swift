import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A write queued for the writer thread. Runs inside a shared transaction.
private protocol WriteJob: AnyObject, Sendable {
    /// Runs the job's statements; the error they threw, if any (the job's savepoint is rolled back).
    func run(_ db: SQLiteConnection) -> (any Error)?
    /// The transaction committed: tells the job's observer, in commit order, before any caller resumes.
    func committed()
    /// Resumes the waiting caller once the transaction committed (nil) or failed.
    func finish(commitError: (any Error)?)
    /// The event loop the caller waits on, if any (see `CallerLoops`).
    var loop: (any EventLoop)? { get }
}

private final class TypedWriteJob<T: Sendable>: WriteJob, @unchecked Sendable {
    // Touched only by the writer thread between enqueue and finish.
    private let body: (SQLiteConnection) throws -> T
    private let continuation: CheckedContinuation<T, any Error>
    private let observer: (@Sendable (T) -> Void)?
    private var result: Result<T, any Error>?
    let loop: (any EventLoop)? = CallerLoops.current

    init(body: @escaping (SQLiteConnection) throws -> T, observer: (@Sendable (T) -> Void)?, continuation: CheckedContinuation<T, any Error>) {
        self.body = body
        self.observer = observer
        self.continuation = continuation
    }

    func committed() {
        if let observer, case .success(let value)? = result { observer(value) }
    }

    func run(_ db: SQLiteConnection) -> (any Error)? {
        do {
            result = .success(try body(db))
            return nil
        } catch {
            result = .failure(error)
            return error
        }
    }

    func finish(commitError: (any Error)?) {
        switch (result, commitError) {
        case (.success?, let error?), (nil, let error?):
            // The transaction could not begin or commit (locked, full, read-only): that is the answer.
            continuation.resume(throwing: error)
        case (let result?, _):
            continuation.resume(with: result)
        case (nil, nil):
            continuation.resume(throwing: StoreError(.failed, "write did not run"))
        }
    }
}

/// The single writer connection with group commit: writes that arrive while a transaction is being
/// committed wait, then run together in the next transaction and share its one fsync. Each write has its
/// own savepoint, so one failing write does not undo the others. The connection's `beforeCommit`
/// statements end every transaction (they index the messages the transaction queued for search).
final class SQLiteWriter: Sendable {
    private let worker = BatchWorker<any WriteJob>(maxBatch: 512)
    private let connection: UnsafeTransfer<SQLiteConnection>
    private let condition: SQLiteCondition

    init(connection: SQLiteConnection, condition: SQLiteCondition) {
        self.connection = UnsafeTransfer(connection)
        self.condition = condition
    }

    /// Runs `body` on the writer thread inside a transaction, returning once it is committed (durable).
    /// `committed` gets the result after the commit, on the writer thread, in commit order.
    @discardableResult
    func write<T: Sendable>(
        committed: (@Sendable (T) -> Void)? = nil, _ body: @escaping (SQLiteConnection) throws -> T
    ) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let queued = worker.submit({ TypedWriteJob(body: body, observer: committed, continuation: continuation) }) { [self] batch in
                commit(batch, db: connection.value)
            }
            if !queued { continuation.resume(throwing: StoreError(.unavailable, "the store is closed")) }
        }
    }

    /// Runs `body` on the writer thread outside any transaction (migrations, checkpoints).
    func withConnection<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        let connection = self.connection
        return try await worker.thread.runIfActive { try body(connection.value) }
    }

    /// Runs a batch in one transaction. Transaction control goes through the prepared-statement cache
    /// (`run`), so a commit parses no SQL.
    private func commit(_ batch: [any WriteJob], db: SQLiteConnection) {
        do {
            try db.run("BEGIN IMMEDIATE")
        } catch {
            noteFailure(error)
            finish(batch, commitError: error)
            return
        }
        if batch.count == 1 {
            if let error = batch[0].run(db) {
                noteFailure(error)
                try? db.execute("ROLLBACK")
                finish(batch, commitError: nil)
                return
            }
        } else {
            for job in batch {
                do {
                    try db.run("SAVEPOINT job")
                    if let error = job.run(db) {
                        noteFailure(error)
                        try db.run("ROLLBACK TO job")
                    }
                    try db.run("RELEASE job")
                } catch {
                    noteFailure(error)
                    try? db.execute("ROLLBACK")
                    finish(batch, commitError: error)
                    return
                }
            }
        }
        do {
            for sql in db.beforeCommit { try db.run(sql) }
            try db.run("COMMIT")
            condition.wrote(nil)
            for job in batch { job.committed() }
            finish(batch, commitError: nil)
        } catch {
            noteFailure(error)
            try? db.execute("ROLLBACK")
            finish(batch, commitError: error)
        }
    }

    private func finish(_ batch: [any WriteJob], commitError: (any Error)?) {
        CallerLoops.resume(batch, loop: \.loop) { $0.finish(commitError: commitError) }
    }

    /// Remembers a write that failed for want of space, permission or I/O, for the health check.
    private func noteFailure(_ error: any Error) {
        if let error = error as? StoreError, error.kind == .unavailable { condition.wrote(error.debugDescription) }
    }

    /// Refuses new writes, waits for queued ones, runs `final` (checkpoint), closes the connection and stops the thread.
    func close(final: @escaping @Sendable (SQLiteConnection) -> Void) async {
        worker.close()
        let connection = self.connection
        // The drain job was submitted before this one, so queued writes finish first.
        _ = try? await worker.thread.runIfActive {
            final(connection.value)
            connection.value.close()
        }
        try? await worker.thread.shutdownGracefully()
    }
}

/// Reader connections, each used by one pool thread at a time.
final class SQLiteReaders: Sendable {
    private let threads: NIOThreadPool
    private let idle: Mutex<[UnsafeTransfer<SQLiteConnection>]>
    private let closed = Atomic<Bool>(false)

    init(connections: [SQLiteConnection]) {
        self.idle = Mutex(connections.map(UnsafeTransfer.init))
        self.threads = NIOThreadPool(numberOfThreads: connections.count)
        self.threads.start()
    }

    /// Runs `body` with a reader connection on a reader thread.
    func read<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await threads.run(ifOpen: !closed.load(ordering: .relaxed)) { [self] in
            // There are as many connections as threads, so one is always free here.
            guard let connection = idle.withLock({ $0.popLast() }) else { throw StoreError(.failed, "no reader connection free") }
            defer { idle.withLock { $0.append(connection) } }
            return try body(connection.value)
        }
    }

    func close() async {
        closed.store(true, ordering: .relaxed)
        try? await threads.shutdownGracefully()
        for connection in idle.withLock({ $0 }) { connection.value.close() }
        idle.withLock { $0.removeAll() }
    }
}

/// Moves a non-Sendable value to the one thread that uses it.
struct UnsafeTransfer<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
