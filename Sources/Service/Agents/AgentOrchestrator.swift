#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import AsyncHTTPClient
import Logging
import Prometheus
import ServiceLifecycle
import Storage
import Synchronization

/// Hands each user message of a session with an agent to that agent, once it is stored, and stores and
/// publishes what the agent answers. One reply at a time per session, in message order; at most
/// `maxConcurrent` agent calls at once overall. A failing agent never loses or blocks the user's message:
/// the session gets a `system` message and the next message tries again (its circuit breaker permitting).
public final class AgentOrchestrator: Service, Sendable {
    struct Entry: Sendable {
        var definition: AgentDefinition
        var agent: any ChatAgent
        var breaker: CircuitBreaker
        var requests: Counter
        var latency: DurationHistogram
        var breakerGauge: Gauge
        var stats = AgentStats()
    }

    struct Job: Sendable {
        var message: ChatMessage
        var requestId: String?
    }

    private struct State {
        /// Per session with messages to answer: its queue and the task draining it, in turn.
        var queues: [UUID: DrainQueue<Job>] = [:]
        var workers: [UUID: Task<Void, Never>] = [:]
        /// Per session, messages refused because its queue was full: the session is told once its
        /// agent is free again.
        var refused: [UUID: [UUID]] = [:]
        var accepting = true
    }

    public let config: AgentsConfig
    private let entries: [String: Entry]
    private let store: any ChatStore
    private let hub: RealtimeHub
    private let registry: PrometheusCollectorRegistry
    private let logger: Logger
    private let permits: AsyncSemaphore
    private let state = Mutex(State())
    /// Messages waiting per session beyond the one being answered.
    static let maxQueuedPerSession = 32
    /// Agent-to-agent handoffs answering one message.
    static let maxHops = 3
    /// How long a reply that the store could not take (a database outage) is tried again before it is given up.
    static let storeRetryLimit = Duration.seconds(120)

    public init(config: AgentsConfig, store: any ChatStore, hub: RealtimeHub, registry: PrometheusCollectorRegistry, logger: Logger) {
        self.config = config
        self.store = store
        self.hub = hub
        self.registry = registry
        self.logger = logger
        self.permits = AsyncSemaphore(config.maxConcurrent)
        var entries: [String: Entry] = [:]
        for definition in config.agents {
            let agent: any ChatAgent
            switch definition.kind {
            case .echo(let prefix):
                agent = EchoAgent(prefix: prefix)
            case .rules(let intents, let fallback):
                agent = RulesAgent(intents: intents, fallback: fallback)
            case .webhook(let url, let secret, let timeout, let retries):
                agent = WebhookAgent(name: definition.name, url: url, secret: Array(secret.utf8), timeout: timeout, retries: retries, client: OutboundHTTP.client)
            case .openai(let baseURL, let model, let apiKey, let systemPrompt, let timeout, let retries, let temperature, let maxTokens):
                agent = OpenAIAgent(
                    baseURL: baseURL, model: model, apiKey: apiKey, systemPrompt: systemPrompt, timeout: timeout, retries: retries,
                    temperature: temperature, maxTokens: maxTokens, client: OutboundHTTP.client
                )
            }
            let labels = [("agent", definition.name)]
            entries[definition.name] = Entry(
                definition: definition, agent: agent, breaker: CircuitBreaker(definition.breaker),
                requests: registry.makeCounter(
                    descriptor: MetricNameDescriptor(metricName: "chat_agent_requests", unitName: "total", helpText: "agent calls"), labels: labels
                ),
                latency: registry.makeDurationHistogram(
                    descriptor: MetricNameDescriptor(metricName: "chat_agent_latency", unitName: "seconds", helpText: "time until an agent's answer is complete"),
                    labels: labels,
                    buckets: [.milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
                              .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(60)]
                ),
                breakerGauge: registry.makeGauge(
                    descriptor: MetricNameDescriptor(metricName: "chat_agent_breaker_open", unitName: "", helpText: "1 while the agent's circuit breaker is open"),
                    labels: labels
                )
            )
        }
        self.entries = entries
    }

    public var isEnabled: Bool { !entries.isEmpty }

    func hasAgent(_ name: String) -> Bool { entries[name] != nil }

    /// The configured agents as `GET /api/agents` shows them: no URLs, no secrets.
    func summaries() -> [API.Agent] {
        config.agents.map { definition in
            API.Agent(
                name: definition.name, kind: definition.kind.name, description: definition.description,
                isDefault: definition.name == config.defaultAgent, available: !(entries[definition.name]?.breaker.isOpen ?? false)
            )
        }
    }

    /// The configured agents with their breaker state and what they did since the start (admins).
    func operations() -> [API.AgentOperations] {
        config.agents.compactMap { definition in
            entries[definition.name].map { entry in
                API.AgentOperations(
                    name: definition.name, kind: definition.kind.name, isDefault: definition.name == config.defaultAgent,
                    breaker: entry.breaker.status(), stats: entry.stats.snapshot
                )
            }
        }
    }

    /// The agent for a new session's first message: the first routing rule that matches, else the default.
    func route(_ text: String) -> String? {
        config.routes.first { $0.matcher.matches(text) }?.agent ?? config.defaultAgent
    }

    // MARK: Queueing

    /// Queues a stored user message for the session's agent. Returns at once.
    func submit(_ message: ChatMessage, requestId: String?) {
        guard isEnabled, message.direction == .inbound else { return }
        let session = message.sessionId
        let admission = state.withLock { s -> DrainQueue<Job>.Admission in
            guard s.accepting else { return .refused }
            let queue = s.queues[session] ?? DrainQueue<Job>(maxBatch: 1, limit: Self.maxQueuedPerSession)
            s.queues[session] = queue
            let admission = queue.push(Job(message: message, requestId: requestId))
            if admission == .drain { s.workers[session] = Task { await self.drain(session, queue) } }
            return admission
        }
        if admission == .refused, isAccepting {
            state.withLock { s in
                if s.refused[session, default: []].count < Self.maxQueuedPerSession { s.refused[session, default: []].append(message.id) }
            }
            logger.warning("agent queue full; message not answered", metadata: ["session_id": "\(session.lowercased)", "request_id": "\(requestId ?? "-")"])
        }
    }

    private var isAccepting: Bool { state.withLock { $0.accepting } }

    /// Answers the session's messages one by one until its queue is empty, then forgets the queue unless
    /// a message arrived in between (its push started the next drain).
    private func drain(_ session: UUID, _ queue: DrainQueue<Job>) async {
        await queue.drain { jobs in
            for job in jobs where !Task.isCancelled {
                await process(job)
                await noteRefused(session)
            }
        }
        state.withLock { s in
            if s.queues[session] === queue, queue.isIdle {
                s.queues[session] = nil
                s.workers[session] = nil
                s.refused[session] = nil
            }
        }
    }

    /// Stops taking messages, cancels replies in progress and waits for them (on shutdown).
    func stop() async {
        let workers = state.withLock { s -> [Task<Void, Never>] in
            s.accepting = false
            for queue in s.queues.values { queue.close() }
            s.queues.removeAll()
            return Array(s.workers.values)
        }
        for worker in workers { worker.cancel() }
        for worker in workers { await worker.value }
    }

    public func run() async throws {
        try? await gracefulShutdown()
        await stop()
    }

    // MARK: Answering

    private func process(_ queued: Job) async {
        var job = queued
        var log = logger
        log[metadataKey: "session_id"] = "\(job.message.sessionId.lowercased)"
        log[metadataKey: "message_id"] = "\(job.message.id.lowercased)"
        if let requestId = job.requestId { log[metadataKey: "request_id"] = "\(requestId)" }
        do {
            guard var session = try await store.session(id: job.message.sessionId),
                session.state == .active, !session.isResolved, session.handoff == nil,
                job.message.userId == session.userId
            else { return }
            // The agent answers the message as it is now: edited while queued, or deleted (then not at all).
            guard let current = try await store.message(sessionId: session.id, id: job.message.id), current.deletedAt == nil else { return }
            job.message = current
            var name = session.agent
            if name.map({ entries[$0] == nil }) ?? true {
                if let stale = name { log.warning("session's agent is not configured any more; routing again", metadata: ["agent": "\(stale)"]) }
                guard let routed = route(job.message.content) else { return }
                guard let updated = try await store.assignAgent(sessionId: session.id, agent: routed, ifUnrouted: name == nil, now: Timestamp.now()),
                    updated.handoff == nil
                else { return }
                session = updated
                name = updated.agent
            }
            var hops = 0
            while let current = name, let entry = entries[current] {
                guard let reply = try await answer(job, session: session, entry: entry, log: log) else { return }
                if let text = reply.text {
                    var metadata = reply.metadata
                    metadata["agent"] = .string(current)
                    metadata["inReplyTo"] = .string(job.message.id.lowercased)
                    try await post(text, type: "agent", session: session.id, metadata: metadata, log: log)
                }
                if reply.resolve {
                    if let resolved = try await store.resolveSession(id: session.id, now: Timestamp.now()) {
                        await SessionChanges(store: store, hub: hub, logger: logger).changed(session.id, to: resolved, reason: "resolved")
                    }
                    return
                }
                switch reply.handoff {
                case nil:
                    return
                case .human?:
                    guard let waiting = try await store.requestHandoff(sessionId: session.id, now: Timestamp.now()) else { return }
                    await SessionChanges(store: store, hub: hub, logger: logger).changed(session.id, to: waiting, reason: "handoff")
                    try await post(
                        "You are being connected to a person; someone will reply here shortly.", type: "system", session: session.id,
                        metadata: ["agent": .string(current), "handoff": "human"], log: log
                    )
                    return
                case .agent(let next)?:
                    guard entries[next] != nil, next != current, hops < Self.maxHops else {
                        log.warning("agent handoff refused", metadata: ["agent": "\(current)", "target": "\(next)"])
                        return
                    }
                    hops += 1
                    guard let updated = try await store.assignAgent(sessionId: session.id, agent: next, ifUnrouted: false, now: Timestamp.now()) else { return }
                    session = updated
                    name = next
                    // The new agent answers the same message.
                }
            }
        } catch is CancellationError {
            return
        } catch {
            log.error("agent orchestration failed", metadata: ["error": "\(String(reflecting: error))"])
        }
    }

    /// Calls the agent under the breaker and the concurrency bound. Nil when it failed (the session
    /// then has a system message saying so).
    private func answer(_ job: Job, session: ChatSession, entry: Entry, log: Logger) async throws -> AgentReply? {
        let name = entry.definition.name
        let history = entry.definition.history > 0
            ? try await store.messages(MessageQuery(sessionId: session.id, before: job.message.id, limit: entry.definition.history)).messages
                .filter { $0.deletedAt == nil }
            : []
        guard entry.breaker.permit() else {
            entry.stats.refusedByBreaker()
            errorCounter(agent: name, reason: "breaker_open").increment()
            try await unavailable(session: session.id, agent: name, code: "breaker_open", job: job, log: log)
            return nil
        }
        let request = AgentRequest(session: session, message: job.message, history: history, requestId: job.requestId)
        let streamId = UUID()
        let sequence = Atomic<Int>(0)
        let hub = self.hub
        let delta: @Sendable (String) -> Void = { piece in
            let index = sequence.wrappingAdd(1, ordering: .relaxed).oldValue
            hub.broadcast(.delta(session: session.id, streamId: streamId, agent: name, index: index, text: piece), session: session.id, exceptUser: nil)
        }
        await permits.acquire()
        defer { permits.release() }
        // Clients show that the assistant is writing, as they do for people.
        hub.broadcast(.typing(session: session.id, user: nil, agent: name, isTyping: true), session: session.id, exceptUser: nil)
        defer { hub.broadcast(.typing(session: session.id, user: nil, agent: name, isTyping: false), session: session.id, exceptUser: nil) }
        entry.requests.increment()
        let started = ContinuousClock.now
        do {
            var reply = try await entry.agent.respond(to: request, delta: delta)
            entry.latency.record(ContinuousClock.now - started)
            entry.stats.record(ContinuousClock.now - started)
            entry.breaker.succeeded()
            entry.breakerGauge.set(0.0)
            // The stream id is the server's: one an agent put in its metadata is not kept.
            reply.metadata["streamId"] = sequence.load(ordering: .relaxed) > 0 ? .string(streamId.lowercased) : nil
            return reply
        } catch is CancellationError {
            entry.breaker.abandoned()
            throw CancellationError()
        } catch {
            entry.latency.record(ContinuousClock.now - started)
            entry.breaker.failed()
            entry.breakerGauge.set(entry.breaker.isOpen ? 1.0 : 0.0)
            let failure = error as? AgentFailure ?? AgentFailure(code: "internal", detail: String(reflecting: error), retryable: false)
            entry.stats.record(ContinuousClock.now - started, error: failure.code)
            errorCounter(agent: name, reason: Self.reason(failure.code)).increment()
            log.error("agent failed", metadata: ["agent": "\(name)", "error": "\(failure)"])
            if Task.isCancelled { throw CancellationError() }
            // A reply that streamed part of itself names its stream: clients drop the draft they showed.
            let streamed = sequence.load(ordering: .relaxed) > 0 ? streamId : nil
            try await unavailable(session: session.id, agent: name, code: failure.code, job: job, streamId: streamed, log: log)
            return nil
        }
    }

    private func errorCounter(agent: String, reason: String) -> Counter {
        registry.makeCounter(
            descriptor: MetricNameDescriptor(metricName: "chat_agent_errors", unitName: "total", helpText: "failed agent calls"),
            labels: [("agent", agent), ("reason", reason)]
        )
    }

    /// Metric label for a failure code: HTTP statuses grouped by class so the series stay few.
    static func reason(_ code: String) -> String {
        if code.hasPrefix("http_5") { return "http_5xx" }
        if code.hasPrefix("http_4") { return "http_4xx" }
        return code
    }

    /// Tells the session which of its messages were refused while its queue was full (saved, not answered).
    private func noteRefused(_ session: UUID) async {
        let refused = state.withLock { $0.refused.removeValue(forKey: session) ?? [] }
        guard !refused.isEmpty, !Task.isCancelled else { return }
        // Only where an agent would have answered them: not a session no agent serves, or people have.
        guard let current = try? await store.session(id: session), !current.isResolved, current.handoff == nil,
              current.agent.map({ entries[$0] != nil }) ?? (config.defaultAgent != nil || !config.routes.isEmpty)
        else { return }
        let count = refused.count == 1 ? "one message was" : "\(refused.count) messages were"
        try? await post(
            "Too many messages were waiting for the assistant: \(count) saved but will not be answered. Please wait for the replies, then ask again.",
            type: "system", session: session,
            metadata: ["error": "queue_full", "notAnswered": .array(refused.map { .string($0.lowercased) })], log: logger
        )
    }

    private func unavailable(session: UUID, agent: String, code: String, job: Job, streamId: UUID? = nil, log: Logger) async throws {
        var metadata: [String: JSONValue] = ["agent": .string(agent), "error": .string(code), "inReplyTo": .string(job.message.id.lowercased)]
        if let requestId = job.requestId { metadata["requestId"] = .string(requestId) }
        if let streamId { metadata["streamId"] = .string(streamId.lowercased) }
        try await post(
            "The assistant is unavailable right now. Your message was saved; please try again in a moment.", type: "system",
            session: session, metadata: metadata, log: log
        )
    }

    /// Stores an outbound message (agent reply or system note) and publishes it. While the store is unavailable
    /// (a database outage) it is tried again, with backoff, for up to `storeRetryLimit`; it carries a client message
    /// id of the server's making, so an attempt that was stored after all although its answer was lost is not
    /// stored twice.
    private func post(_ text: String, type: String, session: UUID, metadata: [String: JSONValue], log: Logger) async throws {
        let key = "agent-" + UUID().lowercased
        let deadline = ContinuousClock.now + Self.storeRetryLimit
        var wait = Duration.milliseconds(250)
        while true {
            do {
                if try await !postOutbound(text, type: type, session: session, metadata: metadata, store: store, hub: hub, clientMessageId: key) {
                    log.info("agent reply dropped: the session ended meanwhile")
                }
                return
            } catch let error as StoreError where error.kind == .unavailable && ContinuousClock.now + wait < deadline {
                log.warning("agent reply not stored yet; trying again", metadata: ["error": "\(error)", "retry_in": "\(wait)"])
                try await Task.sleep(for: wait)
                wait = min(wait * 2, .seconds(10))
            }
        }
    }
}

/// A counting semaphore for async code (FIFO).
final class AsyncSemaphore: Sendable {
    private struct State {
        var available: Int
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    init(_ count: Int) {
        state = Mutex(State(available: count))
    }

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { s -> Bool in
                if s.available > 0 {
                    s.available -= 1
                    return true
                }
                s.waiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }

    func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if !s.waiters.isEmpty { return s.waiters.removeFirst() }
            s.available += 1
            return nil
        }
        next?.resume()
    }
}
