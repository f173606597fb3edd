import NIOPosix
import Synchronization

/// One worker thread fed by a queue, taking the jobs in batches: jobs that arrive while a batch runs wait
/// and go together in the next one (group commit). Used by the SQLite writer and the Postgres appender.
final class BatchWorker<Job: Sendable>: Sendable {
    private struct State {
        var jobs: [Job] = []
        var draining = false
        var closed = false
    }

    /// The worker's thread; other work may run on it between batches.
    let thread = NIOThreadPool(numberOfThreads: 1)
    private let state = Mutex(State())
    private let maxBatch: Int

    init(maxBatch: Int) {
        self.maxBatch = maxBatch
        thread.start()
    }

    /// Queues the job `make` returns (made under the queue's lock, so in queue order); when no batch is
    /// running, starts draining the queue with `run`, one batch at a time. False when closed.
    func submit(_ make: () -> Job, run: @escaping @Sendable ([Job]) -> Void) -> Bool {
        let start = state.withLock { s -> Bool? in
            if s.closed { return nil }
            s.jobs.append(make())
            if s.draining { return false }
            s.draining = true
            return true
        }
        if start == true { thread.submit { [self] _ in drain(run) } }
        return start != nil
    }

    private func drain(_ run: ([Job]) -> Void) {
        while true {
            let batch = state.withLock { s -> [Job] in
                let count = min(s.jobs.count, maxBatch)
                if count == 0 { s.draining = false }
                defer { s.jobs.removeFirst(count) }
                return Array(s.jobs.prefix(count))
            }
            if batch.isEmpty { return }
            run(batch)
        }
    }

    /// Refuses new jobs; those queued still run.
    func close() {
        state.withLock { $0.closed = true }
    }
}

extension NIOThreadPool {
    /// Runs `body` on a pool thread, or fails with `unavailable` once the store is closed.
    func run<T: Sendable>(ifOpen open: Bool, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        guard open else { throw StoreError(.unavailable, "the store is closed") }
        do {
            return try await runIfActive(body)
        } catch is NIOThreadPoolError.ThreadPoolInactive {
            throw StoreError(.unavailable, "the store is closed")
        }
    }
}
