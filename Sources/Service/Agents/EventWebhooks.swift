#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import AsyncHTTPClient
import Logging
import Synchronization
import NIOCore
import ServiceLifecycle
import Storage

/// Integrations subscribed to events (`WEBHOOKS_FILE`).
public struct WebhooksConfig: Sendable {
    public struct Webhook: Sendable, Equatable {
        public var name: String
        public var url: String
        public var secret: [UInt8]
        public var events: Set<String>
        public var timeout: Duration
    }

    /// The events a webhook may subscribe to.
    public static let eventTypes: Set<String> = [
        "message.created", "message.updated", "message.deleted", "session.created", "session.resolved", "handoff.waiting", "handoff.claimed",
    ]

    public var webhooks: [Webhook] = []
    /// Failed deliveries are retried (with exponential backoff) for this many seconds after the event, then parked.
    public var retryPeriod: Int = 24 * 3600

    public static let none = WebhooksConfig()
    public init() {}

    public var isEmpty: Bool { webhooks.isEmpty }
    public var names: [String] { webhooks.map(\.name) }

    /// Parses and validates a webhooks file. `secret` resolves `secret_env` keys (the env file and the environment).
    ///
    /// ```yaml
    /// webhooks:
    ///   - name: crm
    ///     url: https://crm.example.com/hooks/chat
    ///     secret_env: CRM_WEBHOOK_SECRET     # or secret: …, at least 16 characters
    ///     events: [message.created, session.resolved]
    ///     timeout: 10s
    /// ```
    public static func parse(_ text: String, secret: (String) -> String?) throws -> WebhooksConfig {
        let root = try ConfigDocument.parse(text)
        let reader = try Fields(root, path: "", allowed: ["webhooks"])
        var config = WebhooksConfig()
        var names = Set<String>()
        for (i, node) in (try reader.list("webhooks") ?? []).enumerated() {
            let path = "webhooks[\(i)]"
            let fields = try Fields(node, path: path, allowed: ["name", "url", "secret", "secret_env", "events", "timeout"])
            let name = try fields.string("name", required: true)!
            guard AgentsConfig.isValidName(name) else { throw fields.error("name", "must be 1–64 of a-z, 0-9, _ and -, starting with a letter or digit") }
            guard names.insert(name).inserted else { throw fields.error("name", "duplicate webhook name \(name)") }
            let url = try fields.url("url")
            var key = try fields.string("secret")
            if let variable = try fields.string("secret_env") {
                guard key == nil else { throw fields.error("secret_env", "give secret or secret_env, not both") }
                guard let value = secret(variable) else { throw fields.error("secret_env", "\(variable) is not set") }
                guard value.utf8.count >= 16 else { throw fields.error("secret_env", "\(variable) must be at least 16 characters") }
                key = value
            }
            guard let key, key.utf8.count >= 16 else { throw fields.error("secret", "is required: at least 16 characters (or secret_env)") }
            let events = try fields.strings("events") ?? []
            guard !events.isEmpty else { throw fields.error("events", "is required: a list of \(eventTypes.sorted().joined(separator: ", "))") }
            for event in events where !eventTypes.contains(event) {
                throw fields.error("events", "unknown event \(event) (known: \(eventTypes.sorted().joined(separator: ", ")))")
            }
            config.webhooks.append(Webhook(
                name: name, url: url, secret: Array(key.utf8), events: Set(events), timeout: try fields.duration("timeout") ?? .seconds(10)
            ))
        }
        return config
    }
}

/// Delivers the outbox's events to the configured webhooks: at least once, in order per session, signed
/// like webhook agents (`X-Chat-Timestamp`, `X-Chat-Signature`) with the event's id in `X-Chat-Event-Id`,
/// retried with exponential backoff (1 s doubling, at most 10 min apart) for `retryPeriod`, then parked.
/// Several instances on one Postgres share the work: each delivery is claimed by one of them.
struct WebhookDispatcher: Service {
    let store: any ChatStore
    let config: WebhooksConfig
    let logger: Logger
    var client: HTTPClient = OutboundHTTP.client
    /// How often the outbox is looked at when there was nothing to do.
    var idleInterval: Duration = .milliseconds(250)
    /// Deliveries in flight at once.
    var batch = 32
    static let maxBackoffSeconds = 600.0

    func run() async throws {
        let events = config.webhooks.reduce(into: Set<String>()) { $0.formUnion($1.events) }
        // Also when there are none: events of webhooks since removed are no longer recorded or sent. A store
        // that cannot be written to now (full, read-only, down) is asked again; the server serves meanwhile.
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                try await store.setWebhookSubscriptions(events, webhooks: config.names)
                break
            } catch {
                logger.warning("cannot record the webhooks' subscriptions; trying again in 5 s", metadata: ["error": .string(String(reflecting: error))])
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(5)) }
            }
        }
        guard !config.isEmpty else {
            // A service that returns ends the whole group: wait for the server's shutdown instead.
            try? await gracefulShutdown()
            return
        }
        let byName = Dictionary(uniqueKeysWithValues: config.webhooks.map { ($0.name, $0) })
        // A claim outlives the longest attempt; if its instance dies, another (or the restarted one)
        // takes the delivery over after it.
        let lease = Int(config.webhooks.map { $0.timeout.components.seconds }.max() ?? 10) + 10
        var lastPrune = ContinuousClock.now
        // Deliveries run side by side, up to `batch`; one that is slow (a receiver that waits until the
        // timeout) holds up only its own session's later events, not other sessions or other webhooks.
        let inFlight = InFlight()
        await withDiscardingTaskGroup { group in
            while !Task.isShuttingDownGracefully, !Task.isCancelled {
                var worked = false
                do {
                    let now = Timestamp.now()
                    for webhook in config.webhooks {
                        if try await store.fanOutWebhookEvents(webhook: webhook.name, events: webhook.events, limit: 500, now: now) > 0 { worked = true }
                    }
                    let room = batch - inFlight.count
                    let claimed = room > 0 ? try await store.claimWebhookDeliveries(webhooks: config.names, limit: room, lease: lease, now: now) : []
                    for delivery in claimed {
                        guard let webhook = byName[delivery.webhook] else { continue }
                        worked = true
                        inFlight.started()
                        group.addTask {
                            await deliver(delivery, to: webhook)
                            inFlight.finished()  // wakes the loop: its session's next event may be due now
                        }
                    }
                    if ContinuousClock.now - lastPrune > .seconds(600) {
                        lastPrune = .now
                        _ = try await store.pruneWebhookEvents(before: now.addingTimeInterval(-7 * 86400), limit: 1000)
                    }
                } catch where Task.isShuttingDownGracefully || Task.isCancelled || error is CancellationError {
                    break  // the server is stopping
                } catch {
                    logger.warning("webhook delivery round failed", metadata: ["error": .string(String(reflecting: error))])
                }
                if !worked { await inFlight.wait(upTo: idleInterval) }
            }
        }
    }

    /// One attempt; its outcome is recorded (delivered, retried later, or parked).
    func deliver(_ delivery: WebhookDelivery, to webhook: WebhooksConfig.Webhook) async {
        let body = Self.body(delivery)
        var failure: String?
        do {
            let timestamp = String(Int64(Date().timeIntervalSince1970))
            var request = HTTPClientRequest(url: webhook.url)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.headers.add(name: "User-Agent", value: "chat-backend/\(ChatBackendVersion.current)")
            request.headers.add(name: "X-Chat-Event", value: delivery.type)
            request.headers.add(name: "X-Chat-Event-Id", value: delivery.eventId.lowercased)
            request.headers.add(name: "X-Chat-Timestamp", value: timestamp)
            request.headers.add(name: "X-Chat-Signature", value: WebhookAgent.signature(secret: webhook.secret, timestamp: timestamp, body: body))
            request.body = .bytes(ByteBuffer(bytes: body))
            let (seconds, atto) = webhook.timeout.components
            let prepared = request
            // The timeout bounds the whole attempt, the answer's body too (a receiver that drips it would
            // hold the attempt past its claim, and the event would be sent again meanwhile).
            let status = try await withTimeout(webhook.timeout) { [client] in
                let response = try await client.execute(prepared, timeout: .nanoseconds(seconds * 1_000_000_000 + atto / 1_000_000_000))
                _ = try? await response.body.collect(upTo: 64 * 1024)
                return response.status.code
            }
            if !(200..<300).contains(status) { failure = "HTTP \(status)" }
        } catch {
            failure = String(describing: error)
        }
        let now = Timestamp.now()
        var retryAt: Date?
        if failure != nil {
            let next = now.addingTimeInterval(Self.backoff(delivery.attempts) * Double.random(in: 0.8...1.2))
            // Retried for the period after the event, or after it was redelivered (its attempts counted from
            // zero again): as long as the waits between its attempts add up to less than the period.
            let waited = (0...delivery.attempts).reduce(0) { $0 + Self.backoff($1) }
            if next.timeIntervalSince(delivery.createdAt) <= Double(config.retryPeriod) || waited <= Double(config.retryPeriod) { retryAt = next }
            logger.notice(retryAt == nil ? "webhook delivery parked" : "webhook delivery failed; retrying", metadata: [
                "webhook": .string(webhook.name), "event": .string(delivery.eventId.lowercased), "type": .string(delivery.type),
                "attempt": "\(delivery.attempts + 1)", "error": .string(failure ?? ""),
            ])
        }
        do {
            try await store.finishWebhookDelivery(webhook: webhook.name, seq: delivery.seq, error: failure, retryAt: retryAt, now: now)
        } catch {
            // The claim runs out and the delivery is tried again: at least once.
            logger.warning("recording a webhook delivery failed", metadata: ["error": .string(String(reflecting: error))])
        }
    }

    /// Seconds to wait after the failed attempt that follows `attempts` earlier ones: 1 s doubling, at most 10 min.
    static func backoff(_ attempts: Int) -> Double { min(maxBackoffSeconds, Double(1 << min(attempts, 20))) }

    /// `{"id", "type", "createdAt", "data": {"message": …} or {"session": …}}`: the event as receivers get it,
    /// the message or session written as the API writes them.
    static func body(_ delivery: WebhookDelivery) -> [UInt8] {
        var json = JSONWriter(capacity: 2048)
        json.object { json in
            json.field("id", delivery.eventId)
            json.field("type", delivery.type)
            json.field("createdAt", delivery.createdAt)
            json.key("data")
            json.object { json in
                switch delivery.subject {
                case .message(let message):
                    json.key("message")
                    json.value(API.Message(message))
                case .session(let session):
                    json.key("session")
                    json.value(API.Session(session, now: delivery.createdAt))
                }
            }
        }
        return json.bytes
    }
}

/// The deliveries in flight, and a wake-up for the loop that claims more: a delivery that finishes ends
/// the loop's current or next `wait`.
final class InFlight: Sendable {
    private let state = Mutex<(count: Int, signalled: Bool, waiter: CheckedContinuation<Void, Never>?)>((0, false, nil))

    var count: Int { state.withLock { $0.count } }

    func started() { state.withLock { $0.count += 1 } }

    func finished() {
        state.withLock { $0.count -= 1 }
        signal()
    }

    func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.signalled = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Returns when signalled, or after `timeout`.
    func wait(upTo timeout: Duration) async {
        let timer = Task { [self] in
            guard (try? await Task.sleep(for: timeout)) != nil else { return }  // cancelled: woken otherwise
            signal()
        }
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.signalled {
                    state.signalled = false
                    return true
                }
                state.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
        timer.cancel()
    }
}
