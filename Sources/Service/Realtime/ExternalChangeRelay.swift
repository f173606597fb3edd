#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import ServiceLifecycle
import Storage

/// Publishes to local connections the messages other instances stored (Postgres LISTEN/NOTIFY carries the
/// ids; each instance reads them and publishes locally), follows other instances' changes of who may read a
/// session, passes on their `read` markers, and ends local connections of tokens another instance revoked
/// (logout, a reused refresh token).
/// After the feed reconnects, every active room is caught up from storage, so a gap in announcements loses
/// nothing.
///
/// Changes are handled in order, and a read that fails (Postgres restarting, a pooled connection broken by
/// the restart) is retried until it succeeds. A room that cannot be caught up for `giveUpAfter` is told to
/// rejoin with `lastMessageId` (a `resync` event), which replays what it missed.
struct ExternalChangeRelay: Service {
    let store: any ChatStore
    let hub: RealtimeHub
    let tokens: TokenService
    let logger: Logger
    var giveUpAfter: Duration = .seconds(20)

    func run() async throws {
        guard let changes = store.externalMessages() else {
            // Nothing to relay (a single-instance store); a service that returns would stop the whole group.
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown {
            var connectedBefore = false
            for await change in changes {
                switch change {
                case .message(let session, let id):
                    guard hub.hasMembers(session) else { continue }
                    await retrying("reading a message another instance stored", session: session) {
                        if let message = try await store.message(sessionId: session, id: id) { hub.publish(message: message) }
                    }
                case .revoked(let jti, let family):
                    tokens.markRevoked(jti: jti, family: family)
                    hub.disconnect(jti: jti, family: family)
                case .session(let id, let reason):
                    guard hub.hasMembers(id) || RealtimeHub.handoffReasons.contains(reason) else { continue }
                    await retrying("reading a session another instance changed", session: id) {
                        hub.sessionChanged(id, to: try await store.session(id: id), reason: reason)
                    }
                case .messageChanged(let session, let id):
                    guard hub.hasMembers(session) else { continue }
                    await retrying("reading a message another instance changed", session: session) {
                        guard let message = try await store.message(sessionId: session, id: id) else { return }
                        hub.broadcast(.changed(message), session: session, exceptUser: nil)
                    }
                case .read(let read):
                    hub.broadcast(.read(read), session: read.sessionId, exceptUser: nil)
                case .resync:
                    if connectedBefore { await catchUp() }
                    connectedBefore = true
                }
            }
        }
    }

    /// Publishes what each active room may have missed while the feed was away (duplicates are dropped by the hub).
    private func catchUp() async {
        for (session, cursor) in hub.catchUpCursors() {
            await retrying("catching up a room after the change feed reconnected", session: session) {
                var cursor = cursor
                while true {
                    let page = try await store.messages(MessageQuery(sessionId: session, after: cursor, limit: 200))
                    for message in page.messages { hub.publish(message: message) }
                    guard page.hasMore, let last = page.messages.last else { break }
                    cursor = last.id
                }
            }
        }
    }

    /// Runs `body` until it succeeds, backing off from 50 ms to 2 s; after `giveUpAfter` the room's
    /// connections are told to rejoin, and the change is dropped.
    private func retrying(_ what: String, session: UUID, _ body: () async throws -> Void) async {
        let started = ContinuousClock.now
        var delay = Duration.milliseconds(50)
        var failures = 0
        while !Task.isCancelled {
            do {
                try await body()
                if failures > 0 { logger.info("\(what) succeeded after \(failures) failed attempts", metadata: ["session": .string(session.lowercased)]) }
                return
            } catch {
                failures += 1
                if failures == 1 { logger.warning("\(what) failed; retrying", metadata: ["session": .string(session.lowercased), "error": .string(String(reflecting: error))]) }
                guard ContinuousClock.now - started < giveUpAfter else {
                    logger.error("\(what) kept failing; its connections are told to rejoin", metadata: ["session": .string(session.lowercased)])
                    hub.announceGap(session: session)
                    return
                }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(2))
            }
        }
    }
}
