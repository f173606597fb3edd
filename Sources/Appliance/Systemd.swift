import CSystemd
import Logging
import Service
import ServiceLifecycle

/// The parts of systemd's service protocol chat-backend speaks: readiness, status, watchdog, socket activation.
/// Every call is a no-op outside systemd (no NOTIFY_SOCKET, no LISTEN_FDS).
enum Systemd {
    /// Sends a notification (`READY=1`, `STATUS=…`, `STOPPING=1`, `WATCHDOG=1`) to the service manager.
    static func notify(_ state: String) {
        _ = sd_notify(0, state)
    }

    /// The first socket passed by socket activation, if this process was given one; unsets LISTEN_* after reading.
    static func inheritedSocket() -> CInt? {
        let count = sd_listen_fds(1)
        guard count > 0 else { return nil }
        return SD_LISTEN_FDS_START
    }

    /// The watchdog interval requested by the unit (`WatchdogSec=`), if any.
    static func watchdogInterval() -> Duration? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(usec))
    }
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for, while the process is healthy enough to run tasks.
struct WatchdogService: Service {
    let interval: Duration

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            Systemd.notify("WATCHDOG=1")
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval / 2) }
        }
    }
}

/// First to hear of graceful shutdown: tells systemd `STOPPING=1`, then closes realtime connections with
/// 1001 (going away) and gives them a moment to go, before the HTTP server starts draining.
struct ShutdownCoordinator: Service {
    let hub: RealtimeHub
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        logger.info("shutting down: closing realtime connections, finishing in-flight requests")
        Systemd.notify("STOPPING=1\nSTATUS=Stopping: finishing in-flight requests")
        hub.closeAll()
        let deadline = ContinuousClock.now + .seconds(2)
        while hub.connectionCount > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}
