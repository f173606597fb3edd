#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Storage
import Synchronization

/// What an agent gets: the session, the user's message, and the messages before it (oldest first).
struct AgentRequest: Sendable {
    var session: ChatSession
    var message: ChatMessage
    var history: [ChatMessage]
    var requestId: String?
}

/// What an agent answers: a reply to store, a handoff, resolving the session, extra metadata for the reply.
struct AgentReply: Sendable, Equatable {
    var text: String?
    var handoff: HandoffTarget?
    var resolve: Bool = false
    var metadata: [String: JSONValue] = [:]
}

/// Why an agent produced no answer. `retryable` failures (timeouts, connection errors, 5xx, 429) are retried.
struct AgentFailure: Error, CustomStringConvertible, Equatable {
    /// A short, bounded label for metrics and the system message: timeout, connection, http_503, bad_response, …
    var code: String
    var detail: String
    var retryable: Bool

    static func timeout(_ after: Duration) -> AgentFailure {
        AgentFailure(code: "timeout", detail: "no answer within \(after)", retryable: true)
    }

    static func badResponse(_ detail: String) -> AgentFailure {
        AgentFailure(code: "bad_response", detail: detail, retryable: false)
    }

    var description: String { "\(code): \(detail)" }
}

/// An agent: gets a user's message, answers. `delta` streams parts of the reply while it is produced.
protocol ChatAgent: Sendable {
    func respond(to request: AgentRequest, delta: @escaping @Sendable (String) -> Void) async throws -> AgentReply
}

/// Longest stored reply, in characters (the limit of user messages too).
let maxReplyCharacters = Limits.contentCharacters.upperBound

// MARK: Built-in agents

/// Answers with the user's text.
struct EchoAgent: ChatAgent {
    var prefix: String

    func respond(to request: AgentRequest, delta: @escaping @Sendable (String) -> Void) async throws -> AgentReply {
        AgentReply(text: String((prefix + request.message.content).prefix(maxReplyCharacters)))
    }
}

/// Ordered intents: the first that matches answers; else the fallback.
struct RulesAgent: ChatAgent {
    var intents: [RuleIntent]
    var fallback: String?

    func respond(to request: AgentRequest, delta: @escaping @Sendable (String) -> Void) async throws -> AgentReply {
        let text = request.message.content
        for (index, intent) in intents.enumerated() where intent.matcher.matches(text) {
            return AgentReply(
                text: intent.reply.map { render($0, request) }, handoff: intent.handoff, resolve: intent.resolve,
                metadata: ["intent": .int(Int64(index))]
            )
        }
        return AgentReply(text: fallback.map { render($0, request) }, metadata: ["intent": .null])
    }

    /// `{{message}}` is the user's text.
    private func render(_ template: String, _ request: AgentRequest) -> String {
        String(template.replacing("{{message}}", with: request.message.content).prefix(maxReplyCharacters))
    }
}

// MARK: HTTP agents

/// The HTTP client of agent calls and event webhooks. It follows no redirect: an answer is the
/// endpoint's own, and a 3xx is a failed attempt (followed, a POST became a GET elsewhere whose 200
/// counted as delivered while the event was lost). Up to 64 connections per host, so 32 deliveries or an
/// agent's `max_concurrent` calls at once are not queued behind the default 8.
enum OutboundHTTP {
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration.singletonConfiguration
        configuration.redirectConfiguration = .disallow
        configuration.connectionPool = HTTPClient.Configuration.ConnectionPool(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64
        )
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()
}

/// Runs `body`, failing with a timeout after `limit` (the body is cancelled).
func withTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw AgentFailure.timeout(limit)
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}

/// Retries retryable failures with exponential backoff (200 ms, 400 ms, … up to 5 s, with jitter).
func withRetries<T: Sendable>(_ retries: Int, _ attempt: @Sendable (_ number: Int) async throws -> T) async throws -> T {
    var number = 0
    while true {
        do {
            return try await attempt(number)
        } catch let failure as AgentFailure where failure.retryable && number < retries {
            number += 1
            let base = min(200 * (1 << (number - 1)), 5_000)
            try await Task.sleep(for: .milliseconds(base + Int.random(in: 0...(base / 4))))
        }
    }
}

/// Maps transport errors to failures; agent failures and cancellation pass through.
func classify(_ error: any Error) -> any Error {
    if error is AgentFailure || error is CancellationError { return error }
    if let error = error as? HTTPClientError, error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
        return AgentFailure(code: "timeout", detail: "\(error)", retryable: true)
    }
    return AgentFailure(code: "connection", detail: String(describing: error), retryable: true)
}

func failure(status: HTTPResponseStatus, body: String) -> AgentFailure {
    AgentFailure(
        code: "http_\(status.code)", detail: "HTTP \(status.code) \(String(body.prefix(200)))",
        retryable: status.code >= 500 || status.code == 429 || status.code == 408
    )
}

/// POSTs `{session, message, recentMessages}` to a URL, signed with HMAC-SHA256, and reads
/// `{reply?, handoff?, resolve?, metadata?}` back.
///
/// Headers: `X-Chat-Timestamp` (Unix seconds) and `X-Chat-Signature: sha256=<hex>`, the HMAC of
/// `<timestamp>.<body>` with the agent's secret; receivers should also refuse old timestamps.
struct WebhookAgent: ChatAgent {
    var name: String
    var url: String
    var secret: [UInt8]
    var timeout: Duration
    var retries: Int
    var client: HTTPClient
    static let maxResponseBytes = 1 << 20

    func respond(to request: AgentRequest, delta: @escaping @Sendable (String) -> Void) async throws -> AgentReply {
        var json = JSONWriter(capacity: 4096)
        json.object { json in
            json.key("session")
            json.value(API.Session(request.session))
            json.key("message")
            json.value(API.Message(request.message))
            json.field("recentMessages", request.history.map(API.Message.init))
        }
        let body = json.bytes
        return try await withRetries(retries) { _ in try await attempt(body, requestId: request.requestId) }
    }

    static func signature(secret: [UInt8], timestamp: String, body: [UInt8]) -> String {
        "sha256=" + Crypto.hex(Crypto.hmacSHA256(key: secret, data: Array(timestamp.utf8) + [UInt8(ascii: ".")] + body))
    }

    private func attempt(_ body: [UInt8], requestId: String?) async throws -> AgentReply {
        let timestamp = String(Int64(Date().timeIntervalSince1970))
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "chat-backend/\(ChatBackendVersion.current)")
        request.headers.add(name: "X-Chat-Timestamp", value: timestamp)
        request.headers.add(name: "X-Chat-Signature", value: Self.signature(secret: secret, timestamp: timestamp, body: body))
        if let requestId { request.headers.add(name: "X-Request-Id", value: requestId) }
        request.body = .bytes(ByteBuffer(bytes: body))
        let prepared = request
        let (status, responseBody) = try await withTimeout(timeout) { [client, timeout] in
            do {
                let response = try await client.execute(prepared, timeout: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000))
                let bytes = try await response.body.collect(upTo: Self.maxResponseBytes)
                return (response.status, bytes)
            } catch {
                throw classify(error)
            }
        }
        let text = String(buffer: responseBody)
        guard (200..<300).contains(status.code) else { throw failure(status: status, body: text) }
        if status == .noContent || text.allSatisfy(\.isWhitespace) { return AgentReply() }
        guard case .object(let fields)? = JSONValue.parse(text) else { throw AgentFailure.badResponse("the answer is not a JSON object") }
        return try Self.reply(fields)
    }

    /// Validates `{reply?, handoff?, resolve?, metadata?}`.
    static func reply(_ fields: [String: JSONValue]) throws -> AgentReply {
        var reply = AgentReply()
        for key in fields.keys where !["reply", "handoff", "resolve", "metadata"].contains(key) {
            throw AgentFailure.badResponse("unknown field \(key)")
        }
        switch fields["reply"] {
        case nil, .null?: break
        case .string(let text)?:
            guard !text.utf8.contains(0) else { throw AgentFailure.badResponse("reply contains NUL") }
            reply.text = text.isEmpty ? nil : String(text.prefix(maxReplyCharacters))
        default: throw AgentFailure.badResponse("reply must be a string")
        }
        switch fields["handoff"] {
        case nil, .null?: break
        case .string(let target)? where !target.isEmpty: reply.handoff = HandoffTarget(target)
        default: throw AgentFailure.badResponse("handoff must be an agent name or \"human\"")
        }
        switch fields["resolve"] {
        case nil, .null?: break
        case .bool(let b)?: reply.resolve = b
        default: throw AgentFailure.badResponse("resolve must be a boolean")
        }
        switch fields["metadata"] {
        case nil, .null?: break
        case .object(let meta)?:
            guard JSONValue.object(meta).jsonBytes().count <= Limits.metadataBytes, !JSONValue.object(meta).containsNUL else {
                throw AgentFailure.badResponse("metadata is larger than \(Limits.metadataBytes) bytes or contains NUL")
            }
            reply.metadata = meta
        default: throw AgentFailure.badResponse("metadata must be an object")
        }
        return reply
    }
}

/// Any OpenAI-compatible `/chat/completions` endpoint, streamed (server-sent events).
struct OpenAIAgent: ChatAgent {
    var baseURL: String
    var model: String
    var apiKey: String?
    var systemPrompt: String?
    var timeout: Duration
    var retries: Int
    var temperature: Double?
    var maxTokens: Int?
    var client: HTTPClient

    func respond(to request: AgentRequest, delta: @escaping @Sendable (String) -> Void) async throws -> AgentReply {
        let body = requestBody(request).jsonBytes()
        let streamed = Mutex(false)
        return try await withRetries(retries) { _ in
            do {
                return try await attempt(body, requestId: request.requestId) { piece in
                    streamed.withLock { $0 = true }
                    delta(piece)
                }
            } catch var failure as AgentFailure {
                // Once part of the reply reached clients, a retry would repeat it.
                if streamed.withLock({ $0 }) { failure.retryable = false }
                throw failure
            }
        }
    }

    func requestBody(_ request: AgentRequest) -> JSONValue {
        var messages: [JSONValue] = []
        if let systemPrompt { messages.append(.object(["role": "system", "content": .string(systemPrompt)])) }
        for m in request.history {
            switch (m.direction, m.type) {
            case (.inbound, _): messages.append(.object(["role": "user", "content": .string(m.content)]))
            case (.outbound, "agent"): messages.append(.object(["role": "assistant", "content": .string(m.content)]))
            default: continue  // system notes are not part of the conversation
            }
        }
        messages.append(.object(["role": "user", "content": .string(request.message.content)]))
        var fields: [String: JSONValue] = ["model": .string(model), "messages": .array(messages), "stream": .bool(true)]
        if let temperature { fields["temperature"] = .double(temperature) }
        if let maxTokens { fields["max_tokens"] = .int(Int64(maxTokens)) }
        return .object(fields)
    }

    private func attempt(_ body: [UInt8], requestId: String?, delta: @escaping @Sendable (String) -> Void) async throws -> AgentReply {
        var request = HTTPClientRequest(url: baseURL.hasSuffix("/") ? baseURL + "chat/completions" : baseURL + "/chat/completions")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Accept", value: "text/event-stream")
        request.headers.add(name: "User-Agent", value: "chat-backend/\(ChatBackendVersion.current)")
        if let apiKey { request.headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
        if let requestId { request.headers.add(name: "X-Request-Id", value: requestId) }
        request.body = .bytes(ByteBuffer(bytes: body))
        let prepared = request
        return try await withTimeout(timeout) { [client] in
            do {
                let response = try await client.execute(prepared, timeout: .hours(1))
                guard response.status == .ok else {
                    let text = String(buffer: try await response.body.collect(upTo: 64 * 1024))
                    throw failure(status: response.status, body: text)
                }
                let contentType = response.headers.first(name: "content-type")?.lowercased() ?? ""
                if !contentType.contains("text/event-stream") {
                    // A server that ignores `stream`: one JSON completion.
                    let text = String(buffer: try await response.body.collect(upTo: WebhookAgent.maxResponseBytes))
                    return try Self.completion(text, model: model)
                }
                var parser = ServerSentEvents()
                var reply = ""
                var finishReason: String?
                var done = false
                // Pieces go out as `message.delta` at most every 40 ms (those that came meanwhile joined):
                // a provider writing thousands of tiny pieces must not flood the session's connections.
                var unsent = ""
                var lastSent = ContinuousClock.now - .seconds(1)
                stream: for try await buffer in response.body {
                    for event in try parser.feed(buffer) {
                        if event == "[DONE]" { done = true; break stream }
                        let chunk = try Self.chunk(event)
                        if let reason = chunk.finishReason { finishReason = reason }
                        guard let piece = chunk.content.map(Self.withoutNUL), !piece.isEmpty else { continue }
                        let room = maxReplyCharacters - reply.count
                        guard room > 0 else { finishReason = "length"; break stream }
                        let accepted = piece.count > room ? String(piece.prefix(room)) : piece
                        reply += accepted
                        unsent += accepted
                    }
                    if !unsent.isEmpty, ContinuousClock.now - lastSent >= .milliseconds(40) {
                        delta(unsent)
                        unsent = ""
                        lastSent = .now
                    }
                }
                if !unsent.isEmpty { delta(unsent) }
                var metadata: [String: JSONValue] = ["model": .string(model)]
                if let finishReason { metadata["finishReason"] = .string(finishReason) }
                // Neither a finish reason nor `[DONE]`: the stream was cut off; what came is kept, marked.
                if finishReason == nil, !done { metadata["incomplete"] = .bool(true) }
                return AgentReply(text: reply.isEmpty ? nil : reply, metadata: metadata)
            } catch {
                throw classify(error)
            }
        }
    }

    /// The content and finish reason of one streamed chunk.
    static func chunk(_ data: String) throws -> (content: String?, finishReason: String?) {
        guard case .object(let fields)? = JSONValue.parse(data) else { throw AgentFailure.badResponse("a streamed chunk is not JSON") }
        if case .object(let error)? = fields["error"] {
            let message: String
            if case .string(let m)? = error["message"] { message = m } else { message = "error" }
            throw AgentFailure(code: "provider_error", detail: message, retryable: false)
        }
        guard case .array(let choices)? = fields["choices"], case .object(let choice)? = choices.first else { return (nil, nil) }
        var content: String?
        if case .object(let delta)? = choice["delta"], case .string(let text)? = delta["content"] { content = text }
        var reason: String?
        if case .string(let r)? = choice["finish_reason"] { reason = r }
        return (content, reason)
    }

    /// A non-streamed completion.
    static func completion(_ text: String, model: String) throws -> AgentReply {
        guard case .object(let fields)? = JSONValue.parse(text), case .array(let choices)? = fields["choices"],
            case .object(let choice)? = choices.first, case .object(let message)? = choice["message"]
        else { throw AgentFailure.badResponse("the completion has no choices[0].message") }
        var metadata: [String: JSONValue] = ["model": .string(model)]
        if case .string(let reason)? = choice["finish_reason"] { metadata["finishReason"] = .string(String(reason.prefix(64))) }
        guard case .string(let content)? = message["content"] else { return AgentReply(metadata: metadata) }
        let text = withoutNUL(content)
        return AgentReply(text: text.isEmpty ? nil : String(text.prefix(maxReplyCharacters)), metadata: metadata)
    }

    /// A provider's text without NUL characters (no message may hold one; Postgres cannot store it).
    static func withoutNUL(_ text: String) -> String {
        text.utf8.contains(0) ? String(String.UnicodeScalarView(text.unicodeScalars.filter { $0 != "\0" })) : text
    }
}

/// Splits a `text/event-stream` body into the data of its events (multi-line data joined with \n).
/// A line or an event longer than `maxLine` fails the stream: nothing is dropped silently.
struct ServerSentEvents {
    private var pending: [UInt8] = []
    private var data: [String] = []
    private var dataBytes = 0
    private var afterCR = false
    static let maxLine = 1 << 20

    mutating func feed(_ buffer: ByteBuffer) throws -> [String] {
        pending.append(contentsOf: buffer.readableBytesView)
        var events: [String] = []
        var start = 0
        // Lines end with CRLF, LF or CR alone; a CR at the end of a read may be the first half of a CRLF.
        if afterCR, pending.first == UInt8(ascii: "\n") { start = 1 }
        afterCR = false
        while let end = pending[start...].firstIndex(where: { $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") }) {
            let line = pending[start..<end]
            start = end + 1
            if pending[end] == UInt8(ascii: "\r") {
                if start < pending.count {
                    if pending[start] == UInt8(ascii: "\n") { start += 1 }
                } else {
                    afterCR = true
                }
            }
            if line.isEmpty {
                if !data.isEmpty { events.append(data.joined(separator: "\n")) }
                data.removeAll()
                dataBytes = 0
            } else if line.starts(with: Array("data:".utf8)) {
                var value = line.dropFirst(5)
                if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
                dataBytes += value.count + 1
                guard dataBytes <= Self.maxLine else {
                    throw AgentFailure.badResponse("an event of the event stream is longer than \(Self.maxLine) bytes")
                }
                data.append(String(decoding: value, as: UTF8.self))
            }  // comments (`:`), event:, id:, retry: are ignored
        }
        pending.removeFirst(start)
        guard pending.count <= Self.maxLine else {
            throw AgentFailure.badResponse("a line of the event stream is longer than \(Self.maxLine) bytes")
        }
        return events
    }
}
