#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import Storage

/// Tells the realtime rooms, here and on every other instance, that who may read a session changed:
/// connections that may no longer read it leave its room at once.
struct SessionChanges: Sendable {
    let store: any ChatStore
    let hub: RealtimeHub
    let logger: Logger

    /// `session` as it is now, nil when it was deleted.
    func changed(_ id: UUID, to session: ChatSession?, reason: String) async {
        hub.sessionChanged(id, to: session, reason: reason)
        do {
            try await store.announceSessionChange(sessionId: id, reason: reason)
        } catch {
            // Other instances still refuse the connections at their next event (rooms filter by the state
            // they last saw), and a REST read is checked against storage.
            logger.warning("announcing a session change failed", metadata: ["session": .string(id.lowercased), "error": .string(String(reflecting: error))])
        }
    }
}
