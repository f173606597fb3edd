import Logging
import NIOPosix
import Synchronization

/// A write queued for the writer thread. Runs inside a shared transaction.
private protocol WriteJob: AnyObject, Sendable {
    /// Runs the job's statements; the error they threw, if any (the job's savepoint is rolled back).
    func run(_ db: SQLiteConnection) -> (any Error)?
    /// Resumes the waiting caller once the transaction committed (nil) or failed.
    func finish(commitError: (any Error)?)
}

private final class TypedWriteJob<T: Sendable>: WriteJob, @unchecked Sendable {
    // Touched only by the writer thread between enqueue and finish.
    private let body: (SQLiteConnection) throws -> T
    private let continuation: CheckedContinuation<T, any Error>
    private var result: Result<T, any Error>?

    init(body: @escaping (SQLiteConnection) throws -> T, continuation: CheckedContinuation<T, any Error>) {
        self.body = body
        self.continuation = continuation
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
/// own savepoint, so one failing write does not undo the others.
final class SQLiteWriter: Sendable {
    private struct State {
        var jobs: [any WriteJob] = []
        var draining = false
        var closed = false
    }

    private let thread: NIOThreadPool
    private let connection: UnsafeTransfer<SQLiteConnection>
    private let condition: SQLiteCondition
    private let state = Mutex(State())
    private let maxBatch = 512

    init(connection: SQLiteConnection, condition: SQLiteCondition) {
        self.connection = UnsafeTransfer(connection)
        self.condition = condition
        self.thread = NIOThreadPool(numberOfThreads: 1)
        self.thread.start()
    }

    /// Runs `body` on the writer thread inside a transaction, returning once it is committed (durable).
    @discardableResult
    func write<T: Sendable>(_ body: @escaping (SQLiteConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let job = TypedWriteJob(body: body, continuation: continuation)
            let startDrain = state.withLock { s -> Bool? in
                if s.closed { return nil }
                s.jobs.append(job)
                if s.draining { return false }
                s.draining = true
                return true
            }
            switch startDrain {
            case nil: continuation.resume(throwing: StoreError(.unavailable, "the store is closed"))
            case true?: thread.submit { [self] _ in drain() }
            case false?: break
            }
        }
    }

    /// Runs `body` on the writer thread outside any transaction (migrations, checkpoints).
    func withConnection<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        let connection = self.connection
        return try await thread.runIfActive { try body(connection.value) }
    }

    private func drain() {
        let db = connection.value
        while true {
            let batch = state.withLock { s -> [any WriteJob] in
                if s.jobs.isEmpty {
                    s.draining = false
                    return []
                }
                let count = min(s.jobs.count, maxBatch)
                let batch = Array(s.jobs.prefix(count))
                s.jobs.removeFirst(count)
                return batch
            }
            if batch.isEmpty { return }
            commit(batch, db: db)
        }
    }

    private func commit(_ batch: [any WriteJob], db: SQLiteConnection) {
        do {
            try db.execute("BEGIN IMMEDIATE")
        } catch {
            noteFailure(error)
            for job in batch { job.finish(commitError: error) }
            return
        }
        if batch.count == 1 {
            if let error = batch[0].run(db) {
                noteFailure(error)
                try? db.execute("ROLLBACK")
                batch[0].finish(commitError: nil)
                return
            }
        } else {
            for job in batch {
                do {
                    try db.execute("SAVEPOINT job")
                    if let error = job.run(db) {
                        noteFailure(error)
                        try db.execute("ROLLBACK TO job")
                    }
                    try db.execute("RELEASE job")
                } catch {
                    noteFailure(error)
                    try? db.execute("ROLLBACK")
                    for job in batch { job.finish(commitError: error) }
                    return
                }
            }
        }
        do {
            try db.execute("COMMIT")
            condition.wrote(nil)
            for job in batch { job.finish(commitError: nil) }
        } catch {
            noteFailure(error)
            try? db.execute("ROLLBACK")
            for job in batch { job.finish(commitError: error) }
        }
    }

    /// Remembers a write that failed for want of space, permission or I/O, for the health check.
    private func noteFailure(_ error: any Error) {
        if let error = error as? StoreError, error.kind == .unavailable { condition.wrote(error.debugDescription) }
    }

    /// Refuses new writes, waits for queued ones, runs `final` (checkpoint), and stops the thread.
    func close(final: @escaping @Sendable (SQLiteConnection) -> Void) async {
        state.withLock { $0.closed = true }
        let connection = self.connection
        // The drain job was submitted before this one, so queued writes finish first.
        _ = try? await thread.runIfActive { final(connection.value) }
        try? await thread.shutdownGracefully()
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
        guard !closed.load(ordering: .relaxed) else { throw StoreError(.unavailable, "the store is closed") }
        do {
            return try await threads.runIfActive { [self] in
                // There are as many connections as threads, so one is always free here.
                guard let connection = self.idle.withLock({ $0.popLast() }) else {
                    throw StoreError(.failed, "no reader connection free")
                }
                defer { self.idle.withLock { $0.append(connection) } }
                return try body(connection.value)
            }
        } catch is NIOThreadPoolError.ThreadPoolInactive {
            throw StoreError(.unavailable, "the store is closed")
        }
    }

    func close() async {
        closed.store(true, ordering: .relaxed)
        try? await threads.shutdownGracefully()
        idle.withLock { $0.removeAll() }
    }
}

/// Moves a non-Sendable value to the one thread that uses it.
struct UnsafeTransfer<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
