#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import ServiceLifecycle
import Storage

/// Publishes to local connections the messages other instances stored (Postgres LISTEN/NOTIFY carries the
/// ids; each instance reads them and publishes locally), and ends local connections of tokens another
/// instance revoked (logout, a reused refresh token). After the feed reconnects, every active room is
/// caught up from storage, so a gap in announcements loses nothing.
struct ExternalChangeRelay: Service {
    let store: any ChatStore
    let hub: RealtimeHub
    let tokens: TokenService
    let logger: Logger

    func run() async throws {
        guard let changes = store.externalMessages() else {
            // Nothing to relay (a single-instance store); a service that returns would stop the whole group.
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown {
            var connectedBefore = false
            for await change in changes {
                do {
                    switch change {
                    case .message(let session, let id):
                        if let message = try await store.message(sessionId: session, id: id) { hub.publish(message: message) }
                    case .revoked(let jti, let family):
                        tokens.markRevoked(jti: jti, family: family)
                        hub.disconnect(jti: jti, family: family)
                    case .resync:
                        if connectedBefore { try await catchUp() }
                        connectedBefore = true
                    }
                } catch {
                    logger.warning("relaying a change from another instance failed", metadata: ["error": .string(String(reflecting: error))])
                }
            }
        }
    }

    /// Publishes what each active room may have missed while the feed was away (duplicates are dropped by the hub).
    private func catchUp() async throws {
        for (session, newest) in hub.activeRooms() {
            guard let newest else { continue }
            var cursor = newest
            while true {
                let page = try await store.messages(MessageQuery(sessionId: session, after: cursor, limit: 200))
                for message in page.messages { hub.publish(message: message) }
                guard page.hasMore, let last = page.messages.last else { break }
                cursor = last.id
            }
        }
    }
}
