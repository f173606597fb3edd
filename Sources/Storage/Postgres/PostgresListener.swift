import CLibPQ
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOPosix
import Synchronization

/// A dedicated LISTEN connection: turns other instances' NOTIFY announcements of stored messages into a
/// stream. It reconnects by itself (yielding `.resync`, since announcements made meanwhile are lost) and runs
/// on its own thread, waiting on the socket with `poll`, never on an event loop.
final class PostgresListener: Sendable {
    private let conninfo: String
    private let channel: String
    private let instanceID: String
    private let thread = NIOThreadPool(numberOfThreads: 1)
    private let running = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)

    init(conninfo: String, channel: String, instanceID: String) {
        self.conninfo = conninfo
        self.channel = channel
        self.instanceID = instanceID
    }

    /// Starts listening (once) and returns the stream of changes; the stream ends when the store closes.
    func start() -> AsyncStream<ExternalChange>? {
        guard running.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return nil }
        let (stream, continuation) = AsyncStream.makeStream(of: ExternalChange.self, bufferingPolicy: .bufferingNewest(10_000))
        thread.start()
        thread.submit { [self] _ in
            loop(continuation)
            continuation.finish()
        }
        continuation.onTermination = { [self] _ in stopped.store(true, ordering: .relaxed) }
        return stream
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        if running.load(ordering: .relaxed) { thread.shutdownGracefully { _ in } }
    }

    /// Passes a change on. When the consumer is so far behind that the buffer dropped the oldest change,
    /// a `.resync` follows, so the relay catches its rooms up from storage instead of missing messages.
    static func yield(_ change: ExternalChange, to continuation: AsyncStream<ExternalChange>.Continuation) {
        if case .dropped = continuation.yield(change) {
            continuation.yield(.resync)
        }
    }

    private func loop(_ continuation: AsyncStream<ExternalChange>.Continuation) {
        var backoff: UInt32 = 100_000
        while !stopped.load(ordering: .relaxed) {
            do {
                let connection = try PostgresConnection(conninfo: conninfo)
                try connection.execute("LISTEN \(channel)")
                backoff = 100_000
                continuation.yield(.resync)
                try connection.waitForNotifications(until: { self.stopped.load(ordering: .relaxed) }) { payload in
                    // "<instance> <session> <message>", "<instance> revoke-token <jti>",
                    // "<instance> revoke-family <family>", "<instance> session:<reason> <session>" or
                    // "<instance> read <session>/<reader>/<message>/<milliseconds since 1970>",
                    // "<instance> changed <session>/<message>" (edited or deleted);
                    // our own changes are handled locally already.
                    let parts = payload.split(separator: " ")
                    guard parts.count == 3, parts[0] != self.instanceID else { return }
                    switch parts[1] {
                    case "revoke-token":
                        Self.yield(.revoked(jti: String(parts[2]), familyId: nil), to: continuation)
                    case "revoke-family":
                        guard let family = UUID(text: parts[2]) else { return }
                        Self.yield(.revoked(jti: nil, familyId: family), to: continuation)
                    case "read":
                        let fields = parts[2].split(separator: "/")
                        guard fields.count == 4, let session = UUID(text: fields[0]), let reader = UUID(text: fields[1]),
                              let message = UUID(text: fields[2]), let millis = Int64(fields[3]) else { return }
                        let at = Date(timeIntervalSince1970: Double(millis) / 1000)
                        Self.yield(.read(SessionRead(sessionId: session, userId: reader, lastReadId: message, readAt: at)), to: continuation)
                    case "changed":
                        let fields = parts[2].split(separator: "/")
                        guard fields.count == 2, let session = UUID(text: fields[0]), let message = UUID(text: fields[1]) else { return }
                        Self.yield(.messageChanged(sessionId: session, messageId: message), to: continuation)
                    case let kind where kind.hasPrefix("session:"):
                        guard let session = UUID(text: parts[2]) else { return }
                        Self.yield(.session(sessionId: session, reason: String(kind.dropFirst("session:".count))), to: continuation)
                    default:
                        guard let session = UUID(text: parts[1]), let message = UUID(text: parts[2]) else { return }
                        Self.yield(.message(sessionId: session, messageId: message), to: continuation)
                    }
                }
            } catch {
                usleep(backoff)
                backoff = min(backoff * 2, 5_000_000)
            }
        }
    }
}

extension PostgresConnection {
    /// Waits for notifications, calling `handle` with each payload, until `stop` says so or the connection fails.
    func waitForNotifications(until stop: () -> Bool, _ handle: (String) -> Void) throws {
        let fd = socketDescriptor
        while !stop() {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, 500)
            if ready < 0, errno != EINTR { throw StoreError(.unavailable, "poll on the LISTEN connection failed") }
            guard consumeInput() else { throw StoreError(.unavailable, "the LISTEN connection was lost") }
            while let payload = nextNotification() { handle(payload) }
        }
    }
}
