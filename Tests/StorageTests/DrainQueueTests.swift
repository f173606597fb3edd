import Foundation
import Synchronization
import Testing

@testable import Storage

private final class Shared: Sendable {
    let drainers = Atomic<Int>(0)
    let overlap = Atomic<Bool>(false)
    let seen = Mutex<[[Int]]>(Array(repeating: [], count: 8))
    let counter = Mutex(0)
}

@Suite("DrainQueue")
struct DrainQueueTests {
    @Test("the push into an idle queue starts a drain; later pushes join it; an empty batch ends it")
    func turns() {
        let queue = DrainQueue<Int>()
        #expect(queue.isIdle)
        #expect(queue.push(1) == .drain)
        #expect(queue.push(2) == .queued)
        #expect(!queue.isIdle)
        #expect(queue.next() == [1, 2])
        #expect(queue.push(3) == .queued, "the drain is still going: it takes 3 next")
        #expect(queue.next() == [3])
        #expect(queue.next() == [])
        #expect(queue.isIdle)
        #expect(queue.push(4) == .drain, "a push after the drain ended starts another")
    }

    @Test("batches are at most maxBatch, oldest first")
    func batches() {
        let queue = DrainQueue<Int>(maxBatch: 3)
        for i in 0..<8 { _ = queue.push(i) }
        var batches: [[Int]] = []
        queue.drain { batches.append($0) }
        #expect(batches == [[0, 1, 2], [3, 4, 5], [6, 7]])
        #expect(queue.isIdle)
    }

    @Test("a full or closed queue refuses; what was queued before the close is still drained")
    func limits() {
        let queue = DrainQueue<Int>(limit: 2)
        #expect(queue.push(1) == .drain)
        #expect(queue.push(2) == .queued)
        #expect(queue.push(3) == .refused)
        #expect(queue.next() == [1, 2])
        #expect(queue.push(3) == .queued)
        queue.close()
        #expect(queue.push(4) == .refused)
        #expect(queue.next() == [3])
        #expect(queue.next() == [])
    }

    @Test("many producers: every item is drained once, in each producer's order, by one drainer at a time")
    func concurrent() async {
        let queue = DrainQueue<(producer: Int, seq: Int)>(maxBatch: 64)
        let shared = Shared()
        let perProducer = 5_000
        await withTaskGroup(of: Void.self) { group in
            for producer in 0..<8 {
                group.addTask {
                    for seq in 0..<perProducer {
                        guard queue.push((producer, seq)) == .drain else { continue }
                        queue.drain { batch in
                            if shared.drainers.wrappingAdd(1, ordering: .relaxed).newValue != 1 { shared.overlap.store(true, ordering: .relaxed) }
                            shared.seen.withLock { s in for item in batch { s[item.producer].append(item.seq) } }
                            shared.drainers.wrappingSubtract(1, ordering: .relaxed)
                        }
                    }
                }
            }
        }
        let overlapped = shared.overlap.load(ordering: .relaxed)
        #expect(!overlapped)
        #expect(queue.isIdle)
        shared.seen.withLock { s in
            for producer in 0..<8 { #expect(s[producer] == Array(0..<perProducer), "producer \(producer)") }
        }
    }

    @Test("what push makes under the lock is made in queue order")
    func madeInOrder() async {
        let queue = DrainQueue<Int>()
        let shared = Shared()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    for _ in 0..<1_000 {
                        _ = queue.push { shared.counter.withLock { c in c += 1; return c } }
                    }
                }
            }
        }
        var all: [Int] = []
        queue.drain { all += $0 }
        #expect(all == Array(1...4_000))
    }
}
