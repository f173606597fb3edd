import Synchronization

/// A FIFO queue that one drainer empties at a time, in batches.
///
/// Whoever pushes into an idle queue is told to start draining (`.drain`); the drainer takes batches
/// until the queue is empty, and what is pushed meanwhile joins a later batch of the same drain. So
/// work that arrives while a batch is in flight is done together (group commit), in the order it
/// arrived, and never by two drainers at once. Used by the SQLite writer and the Postgres appender
/// (one transaction per batch), WebSocket connections (one flush per batch), realtime clients (frames
/// leave in the order their room decided) and the agent orchestrator (one session's messages in turn).
public final class DrainQueue<Item: Sendable>: Sendable {
    public enum Admission: Sendable, Equatable {
        /// Queued, and the queue was idle: the caller must drain it (now, or by scheduling `drain`).
        case drain
        /// Queued; a drain in progress will take it.
        case queued
        /// Not queued: the queue is closed, or holds `limit` items.
        case refused
    }

    private struct State {
        var items: [Item] = []
        var head = 0
        var draining = false
        var closed = false
        var count: Int { items.count - head }
    }

    private let state = Mutex(State())
    private let maxBatch: Int
    private let limit: Int

    /// `maxBatch` bounds what one batch takes; `limit` what the queue holds.
    public init(maxBatch: Int = .max, limit: Int = .max) {
        precondition(maxBatch > 0 && limit > 0)
        self.maxBatch = maxBatch
        self.limit = limit
    }

    /// Appends an item.
    public func push(_ item: Item) -> Admission {
        push { item }
    }

    /// Appends the item `make` returns; it runs under the queue's lock, only when the item is taken, so
    /// what it numbers or stamps is numbered in queue order.
    public func push(_ make: () -> Item) -> Admission {
        state.withLock { s in
            guard !s.closed, s.count < limit else { return .refused }
            s.items.append(make())
            if s.draining { return .queued }
            s.draining = true
            return .drain
        }
    }

    /// The next batch, oldest first. An empty batch means the queue is empty and this drain is over:
    /// the next push starts another.
    public func next() -> [Item] {
        state.withLock { s in
            guard s.count > 0 else {
                s.draining = false
                s.items.removeAll(keepingCapacity: s.items.capacity <= 1024)
                s.head = 0
                return []
            }
            let end = s.head + min(s.count, maxBatch)
            let batch = Array(s.items[s.head..<end])
            s.head = end
            if s.head == s.items.count || s.head >= 1024 {
                s.items.removeFirst(s.head)
                s.head = 0
            }
            return batch
        }
    }

    /// Takes batches and hands them to `body` until the queue is empty.
    public func drain(_ body: ([Item]) -> Void) {
        while case let batch = next(), !batch.isEmpty { body(batch) }
    }

    /// Takes batches and hands them to `body` until the queue is empty.
    public func drain(_ body: ([Item]) async -> Void) async {
        while case let batch = next(), !batch.isEmpty { await body(batch) }
    }

    /// Refuses every later push; what is queued is still handed to the drain.
    public func close() {
        state.withLock { $0.closed = true }
    }

    /// Items queued and not yet taken.
    public var count: Int { state.withLock { $0.count } }

    /// Nothing queued and no drain in progress.
    public var isIdle: Bool { state.withLock { $0.count == 0 && !$0.draining } }
}
