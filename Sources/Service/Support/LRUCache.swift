import Synchronization

/// A thread-safe least-recently-used cache bounded by entry count and by total cost (bytes).
///
/// It stands in for Redis: hot records, token revocations, rate-limit buckets. It is a cache, so losing
/// an entry only costs a recomputation or a lookup; correctness never depends on it.
public final class LRUCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct Node {
        var key: Key
        var value: Value
        var cost: Int
        var prev: Int
        var next: Int
    }

    private struct State {
        var index: [Key: Int] = [:]
        var nodes: [Node] = []
        var free: [Int] = []
        var head = -1  // most recent
        var tail = -1  // least recent
        var totalCost = 0
    }

    public let maxEntries: Int
    public let maxCost: Int
    private let state = Mutex(State())

    public init(maxEntries: Int, maxCost: Int = .max) {
        self.maxEntries = max(1, maxEntries)
        self.maxCost = max(1, maxCost)
    }

    /// Number of entries.
    public var count: Int { state.withLock { $0.index.count } }

    /// Total cost of the entries.
    public var totalCost: Int { state.withLock { $0.totalCost } }

    /// The value for `key`, marking it most recently used.
    public func get(_ key: Key) -> Value? {
        state.withLock { s in
            guard let i = s.index[key] else { return nil }
            Self.moveToFront(&s, i)
            return s.nodes[i].value
        }
    }

    /// Stores a value, evicting least recently used entries to stay within bounds.
    public func set(_ key: Key, _ value: Value, cost: Int = 1) {
        state.withLock { s in Self.set(&s, key, value, cost: cost, maxEntries: maxEntries, maxCost: maxCost) }
    }

    /// Reads, transforms and writes one entry atomically; returns what `body` returns.
    public func update<R>(_ key: Key, cost: Int = 1, _ body: (inout Value?) -> R) -> R {
        state.withLock { s in
            var value: Value? = nil
            if let i = s.index[key] { value = s.nodes[i].value }
            let result = body(&value)
            if let value {
                Self.set(&s, key, value, cost: cost, maxEntries: maxEntries, maxCost: maxCost)
            } else {
                Self.remove(&s, key)
            }
            return result
        }
    }

    /// Removes an entry.
    public func remove(_ key: Key) {
        state.withLock { s in Self.remove(&s, key) }
    }

    private static func set(_ s: inout State, _ key: Key, _ value: Value, cost: Int, maxEntries: Int, maxCost: Int) {
        if let i = s.index[key] {
            s.totalCost += cost - s.nodes[i].cost
            s.nodes[i].value = value
            s.nodes[i].cost = cost
            moveToFront(&s, i)
        } else {
            let node = Node(key: key, value: value, cost: cost, prev: -1, next: s.head)
            let i: Int
            if let reused = s.free.popLast() {
                s.nodes[reused] = node
                i = reused
            } else {
                s.nodes.append(node)
                i = s.nodes.count - 1
            }
            if s.head >= 0 { s.nodes[s.head].prev = i }
            s.head = i
            if s.tail < 0 { s.tail = i }
            s.index[key] = i
            s.totalCost += cost
        }
        while s.index.count > maxEntries || (s.totalCost > maxCost && s.index.count > 1) {
            remove(&s, s.nodes[s.tail].key)
        }
    }

    private static func remove(_ s: inout State, _ key: Key) {
        guard let i = s.index.removeValue(forKey: key) else { return }
        unlink(&s, i)
        s.totalCost -= s.nodes[i].cost
        s.free.append(i)
    }

    private static func unlink(_ s: inout State, _ i: Int) {
        let prev = s.nodes[i].prev
        let next = s.nodes[i].next
        if prev >= 0 { s.nodes[prev].next = next } else { s.head = next }
        if next >= 0 { s.nodes[next].prev = prev } else { s.tail = prev }
        s.nodes[i].prev = -1
        s.nodes[i].next = -1
    }

    private static func moveToFront(_ s: inout State, _ i: Int) {
        guard s.head != i else { return }
        unlink(&s, i)
        s.nodes[i].next = s.head
        if s.head >= 0 { s.nodes[s.head].prev = i }
        s.head = i
        if s.tail < 0 { s.tail = i }
    }
}
