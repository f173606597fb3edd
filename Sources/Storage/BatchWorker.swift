import NIOCore
import NIOPosix
import Synchronization

/// One worker thread fed by a queue, taking the jobs in batches: jobs that arrive while a batch runs wait
/// and go together in the next one (group commit). Used by the SQLite writer and the Postgres appender.
final class BatchWorker<Job: Sendable>: Sendable {
    /// The worker's thread; other work may run on it between batches.
    let thread = NIOThreadPool(numberOfThreads: 1)
    private let queue: DrainQueue<Job>

    init(maxBatch: Int) {
        queue = DrainQueue(maxBatch: maxBatch)
        thread.start()
    }

    /// Queues the job `make` returns (made under the queue's lock, so in queue order); when no batch is
    /// running, starts draining the queue with `run`, one batch at a time. False when closed.
    func submit(_ make: () -> Job, run: @escaping @Sendable ([Job]) -> Void) -> Bool {
        switch queue.push(make) {
        case .drain: thread.submit { [queue] _ in queue.drain(run) }
        case .queued: break
        case .refused: return false
        }
        return true
    }

    /// Refuses new jobs; those queued still run.
    func close() {
        queue.close()
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

/// Resumes the callers of a finished batch. A caller that was running on an event loop (a request's task)
/// is resumed from that loop, all of the batch's callers there in one hop: the loop is woken once per batch
/// instead of once per caller, and each task continues on its own loop without another wake-up.
enum CallerLoops {
    /// The event loop the calling thread runs, if any: remembered when a job is queued.
    static var current: (any EventLoop)? { MultiThreadedEventLoopGroup.currentEventLoop }

    static func resume<Job: Sendable>(_ jobs: [Job], loop: (Job) -> (any EventLoop)?, _ resume: @escaping @Sendable (Job) -> Void) {
        var groups: [ObjectIdentifier: (loop: any EventLoop, jobs: [Job])] = [:]
        for job in jobs {
            if let loop = loop(job) {
                groups[ObjectIdentifier(loop), default: (loop, [])].jobs.append(job)
            } else {
                resume(job)
            }
        }
        for (loop, jobs) in groups.values {
            loop.execute { for job in jobs { resume(job) } }
        }
    }
}
