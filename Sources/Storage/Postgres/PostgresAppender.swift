#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOCore
import NIOPosix
import Synchronization

/// Group commit for message appends on Postgres: appends that arrive while a batch is in flight are sent
/// together as one pipelined transaction on a dedicated connection, so one round trip and one WAL flush
/// cover many messages. Each append keeps its own checks (one statement each).
final class PostgresAppender: Sendable {
    struct Job: @unchecked Sendable {
        var message: ChatMessage
        var now: Date
        var owner: UUID?
        var committed: (@Sendable (ChatMessage) -> Void)?
        var continuation: CheckedContinuation<AppendOutcome, any Error>
        var loop: (any EventLoop)? = CallerLoops.current
    }

    private let conninfo: String
    private let worker = BatchWorker<Job>(maxBatch: 256)
    // Touched only on the appender's thread.
    private let connection = Mutex<UnsafeTransfer<PostgresConnection>?>(nil)
    private let decide: @Sendable (PostgresConnection, ChatMessage, UUID?, SQLRow?) throws -> AppendOutcome
    private let single: @Sendable (PostgresConnection, ChatMessage, Date, UUID?) throws -> AppendOutcome
    private let statement: String
    private let parameters: @Sendable (ChatMessage, Date, UUID?) -> [SQLValue]

    init(
        conninfo: String, statement: String, parameters: @escaping @Sendable (ChatMessage, Date, UUID?) -> [SQLValue],
        single: @escaping @Sendable (PostgresConnection, ChatMessage, Date, UUID?) throws -> AppendOutcome,
        decide: @escaping @Sendable (PostgresConnection, ChatMessage, UUID?, SQLRow?) throws -> AppendOutcome
    ) {
        self.conninfo = conninfo
        self.statement = statement
        self.parameters = parameters
        self.single = single
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
                return Job(message: message, now: now, owner: owner, committed: committed, continuation: continuation)
            }) { [self] batch in run(batch) }
            if !queued { continuation.resume(throwing: StoreError(.unavailable, "the store is closed")) }
        }
    }

    private func currentConnection() throws -> PostgresConnection {
        if let existing = connection.withLock({ $0 })?.value, existing.consumeInput(), existing.isHealthy { return existing }
        let fresh = try PostgresConnection(conninfo: conninfo)
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
        let each = { (job: Job) in Result { try self.single(db, job.message, job.now, job.owner) } }
        if batch.count == 1 { return [each(batch[0])] }
        do {
            let rows = try db.pipelined(statement, batch.map { parameters($0.message, $0.now, $0.owner) })
            return zip(batch, rows).map { job, row in Result { try decide(db, job.message, job.owner, row) } }
        } catch let error as StoreError where error.kind != .unavailable && db.isHealthy {
            // One append failed and aborted the batch; nothing was committed. Run each on its own.
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
