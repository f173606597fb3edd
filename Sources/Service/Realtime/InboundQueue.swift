import Synchronization

/// What one realtime connection received, handled in order by a task that exists only while there is work.
/// Reading pauses while `pauseAt` items wait and resumes when `resumeAt` are left, so a client that sends
/// faster than its events are handled is slowed down instead of making the server hold its backlog. The
/// task belongs to the queue: closing the queue drops what waits and cancels the item being handled.
final class InboundQueue<Work: Sendable>: Sendable {
    private struct State {
        var pending: [Work] = []
        var worker: Task<Void, Never>?
        var paused = false
        var closed = false
    }

    private let state = Mutex(State())
    private let pauseAt: Int
    private let resumeAt: Int

    init(pauseAt: Int = 16, resumeAt: Int = 4) {
        precondition(resumeAt < pauseAt)
        self.pauseAt = pauseAt
        self.resumeAt = resumeAt
    }

    /// Queues `work` (nothing once closed). The push that finds no task running starts one with its `handle`
    /// (given each item in turn) and `setReading` (pauses and resumes the connection's reads); pushes while it
    /// runs join its queue, so every push of a connection passes the same two.
    func push(_ work: Work, handle: @escaping @Sendable (Work) async -> Void, setReading: @escaping @Sendable (Bool) -> Void) {
        let pause = state.withLock { s -> Bool in
            guard !s.closed else { return false }
            s.pending.append(work)
            if s.worker == nil { s.worker = Task { await self.run(handle: handle, setReading: setReading) } }
            guard !s.paused, s.pending.count >= pauseAt else { return false }
            s.paused = true
            return true
        }
        if pause { setReading(false) }
    }

    private func run(handle: @Sendable (Work) async -> Void, setReading: @Sendable (Bool) -> Void) async {
        while true {
            let (next, resume) = state.withLock { s -> (Work?, Bool) in
                guard !s.closed, !s.pending.isEmpty else {
                    s.worker = nil
                    return (nil, false)
                }
                let work = s.pending.removeFirst()
                let resume = s.paused && s.pending.count <= resumeAt
                if resume { s.paused = false }
                return (work, resume)
            }
            if resume { setReading(true) }
            guard let next else { return }
            await handle(next)
        }
    }

    /// Drops what waits, refuses what comes, and cancels the item being handled; false when closed already.
    @discardableResult
    func close() -> Bool {
        let (first, worker) = state.withLock { s -> (Bool, Task<Void, Never>?) in
            defer {
                s.closed = true
                s.pending.removeAll()
                s.worker = nil
            }
            return (!s.closed, s.worker)
        }
        worker?.cancel()
        return first
    }
}
