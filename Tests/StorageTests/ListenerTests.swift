import Foundation
import Testing
@testable import Storage

@Suite("Postgres change feed")
struct ListenerTests {
    @Test("when the buffer overflows, a resync follows so the relay catches up from storage")
    func overflowAsksForResync() async {
        let (stream, continuation) = AsyncStream.makeStream(of: ExternalChange.self, bufferingPolicy: .bufferingNewest(2))
        let session = UUID()
        let ids = (0..<3).map { _ in UUID() }
        for id in ids { PostgresListener.yield(.message(sessionId: session, messageId: id), to: continuation) }
        continuation.finish()
        var received: [ExternalChange] = []
        for await change in stream { received.append(change) }
        #expect(received == [.message(sessionId: session, messageId: ids[2]), .resync])
    }

    @Test("without overflow nothing extra is added")
    func noOverflowNoResync() async {
        let (stream, continuation) = AsyncStream.makeStream(of: ExternalChange.self, bufferingPolicy: .bufferingNewest(10))
        let session = UUID()
        let ids = (0..<3).map { _ in UUID() }
        for id in ids { PostgresListener.yield(.message(sessionId: session, messageId: id), to: continuation) }
        continuation.finish()
        var received: [ExternalChange] = []
        for await change in stream { received.append(change) }
        #expect(received == ids.map { .message(sessionId: session, messageId: $0) })
    }
}
