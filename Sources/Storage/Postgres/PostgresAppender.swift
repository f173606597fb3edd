#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOCore
import NIOPosix
import Synchronization

/// Group commit for message appends on Postgres: appends that arrive while a batch is in flight are sent
/// together as one statement on a dedicated connection, so one round trip, one executor start-up and one
/// WAL flush cover many messages. Each append keeps its own checks (a row each in the statement's result).
final class PostgresAppender: Sendable {
    /// What one append inserts.
    struct Append: Sendable {
        var message: ChatMessage
        var now: Date
        var owner: UUID?
    }

    struct Job: @unchecked Sendable {
        var append: Append
        var committed: (@Sendable (ChatMessage) -> Void)?
        var continuation: CheckedContinuation<AppendOutcome, any Error>
        var loop: (any EventLoop)? = CallerLoops.current
    }

    private let conninfo: String
    private let timeout: Duration?
    private let worker = BatchWorker<Job>(maxBatch: 256)
    // Touched only on the appender's thread.
    private let connection = Mutex<UnsafeTransfer<PostgresConnection>?>(nil)
    private let insert: @Sendable (PostgresConnection, [Append]) throws -> [SQLRow?]
    private let decide: @Sendable (PostgresConnection, ChatMessage, UUID?, SQLRow?) throws -> AppendOutcome

    /// `append` runs the appends in one statement (its own transaction) and returns each one's row; `decide`
    /// turns a row into the append's outcome (after the commit).
    init(
        conninfo: String, timeout: Duration?, append: @escaping @Sendable (PostgresConnection, [Append]) throws -> [SQLRow?],
        decide: @escaping @Sendable (PostgresConnection, ChatMessage, UUID?, SQLRow?) throws -> AppendOutcome
    ) {
        self.conninfo = conninfo
        self.timeout = timeout
        self.insert = append
        self.decide = decide
    }

    /// `committed` gets a created message on the appender's thread, in commit order, before the call returns.
    func append(_ message: ChatMessage, now: Date, owner: UUID?, committed: (@Sendable (ChatMessage) -> Void)?) async throws -> AppendOutcome {
        try await withCheckedThrowingContinuation { continuation in
            // Ids are made in queue order, which is commit order (one connection, batches in turn),
            // so a reader paging with `after` cannot skip a message committed late.
            let queued = worker.submit({
                var message = message
                message.id = UUIDv7.make(now: now)
                return Job(append: Append(message: message, now: now, owner: owner), committed: committed, continuation: continuation)
            }) { [self] batch in run(batch) }
            if !queued { continuation.resume(throwing: StoreError(.unavailable, "the store is closed")) }
        }
    }

    private func currentConnection() throws -> PostgresConnection {
        if let existing = connection.withLock({ $0 })?.value, existing.isUsable { return existing }
        let fresh = try PostgresConnection(conninfo: conninfo, timeout: timeout)
        connection.withLock { $0 = UnsafeTransfer(fresh) }
        return fresh
    }

    private func run(_ batch: [Job]) {
        let outcomes = outcomes(batch)
        for (job, outcome) in zip(batch, outcomes) {
            if let committed = job.committed, case .success(.created(let message)) = outcome { committed(message) }
        }
        CallerLoops.resume(Array(zip(batch, outcomes)), loop: \.0.loop) { job, outcome in job.continuation.resume(with: outcome) }
    }

    /// What each append of the batch comes to, in order (on the appender's thread).
    private func outcomes(_ batch: [Job]) -> [Result<AppendOutcome, any Error>] {
        let db: PostgresConnection
        do {
            db = try currentConnection()
        } catch {
            return batch.map { _ in .failure(error) }
        }
        let decided = { (job: Job, row: SQLRow?) in Result { try self.decide(db, job.append.message, job.append.owner, row) } }
        let each = { (job: Job) in Result { try self.insert(db, [job.append])[0] }.flatMap { decided(job, $0) } }
        if batch.count == 1 { return [each(batch[0])] }
        do {
            return zip(batch, try insert(db, batch.map(\.append))).map(decided)
        } catch let error as StoreError where error.kind != .unavailable && db.isHealthy {
            // One append failed and aborted the statement; nothing was committed. Run each on its own.
            return batch.map(each)
        } catch {
            return batch.map { _ in .failure(error) }
        }
    }

    func close() async {
        worker.close()
        _ = try? await worker.thread.runIfActive { [self] in connection.withLock { $0 = nil } }
        try? await worker.thread.shutdownGracefully()
    }
}
