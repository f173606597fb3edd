#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Storage
import Synchronization

/// A compiled regex shared across tasks (Regex itself is not Sendable).
final class SharedRegex: Sendable {
    private let regex: Mutex<Regex<AnyRegexOutput>>

    init(_ pattern: String) throws {
        regex = Mutex(try Regex(pattern))
    }

    func matches(_ text: String) -> Bool {
        regex.withLock { (try? $0.firstMatch(in: text)) != nil }
    }
}

/// How a rule or route recognises a message: any of the keywords (whole words, case-insensitive), or a regex.
struct MessageMatcher: Sendable {
    var keywords: [String]
    var pattern: String?
    private let regex: SharedRegex?

    init(keywords: [String], pattern: String?) throws {
        self.keywords = keywords.map { $0.lowercased() }
        self.pattern = pattern
        self.regex = try pattern.map { try SharedRegex($0) }
    }

    func matches(_ text: String) -> Bool {
        if let regex, regex.matches(text) { return true }
        guard !keywords.isEmpty else { return false }
        let words = text.lowercased().split { !($0.isLetter || $0.isNumber || $0 == "'" || $0 == "-") }
        return keywords.contains { keyword in
            if keyword.contains(" ") { return text.lowercased().contains(keyword) }
            return words.contains { $0 == keyword }
        }
    }
}

/// Where an agent sends a session next.
enum HandoffTarget: Sendable, Equatable {
    case agent(String)
    case human

    init(_ text: String) {
        self = text == "human" ? .human : .agent(text)
    }

    var text: String {
        switch self {
        case .agent(let name): return name
        case .human: return "human"
        }
    }
}

/// One intent of a `rules` agent.
struct RuleIntent: Sendable {
    var matcher: MessageMatcher
    var reply: String?
    var handoff: HandoffTarget?
    var resolve: Bool
}

/// A circuit breaker's settings: open after `failures` failures in a row, try again after `cooldown`.
struct BreakerSettings: Sendable, Equatable {
    var failures: Int = 5
    var cooldown: Duration = .seconds(30)
}

/// One configured agent.
struct AgentDefinition: Sendable {
    enum Kind: Sendable {
        case echo(prefix: String)
        case rules(intents: [RuleIntent], fallback: String?)
        case webhook(url: String, secret: String, timeout: Duration, retries: Int)
        case openai(baseURL: String, model: String, apiKey: String?, systemPrompt: String?, timeout: Duration, retries: Int, temperature: Double?, maxTokens: Int?)

        var name: String {
            switch self {
            case .echo: return "echo"
            case .rules: return "rules"
            case .webhook: return "webhook"
            case .openai: return "openai"
            }
        }
    }

    var name: String
    var description: String?
    var kind: Kind
    /// How many earlier messages of the session the agent gets.
    var history: Int
    var breaker: BreakerSettings
}

/// A routing rule: a session's first message matching it goes to `agent`.
struct RouteRule: Sendable {
    var matcher: MessageMatcher
    var agent: String
}

/// The agents file: agents, routing of new sessions, the default agent, and the concurrency bound.
public struct AgentsConfig: Sendable {
    var agents: [AgentDefinition]
    var routes: [RouteRule]
    var defaultAgent: String?
    /// Replies being produced at once, across all sessions.
    var maxConcurrent: Int
    /// Where the definitions came from (for logs).
    public var source: String

    /// No agents: messages are only stored and published.
    public static let none = AgentsConfig(agents: [], routes: [], defaultAgent: nil, maxConcurrent: 16, source: "none")

    public var isEmpty: Bool { agents.isEmpty }
    public var agentNames: [String] { agents.map(\.name) }
    func agent(named name: String) -> AgentDefinition? { agents.first { $0.name == name } }

    /// Parses and validates an agents file. `secret` resolves `*_env` keys (the env file and the environment).
    public static func parse(_ text: String, source: String, secret: (String) -> String?) throws -> AgentsConfig {
        let root = try ConfigDocument.parse(text)
        let reader = try Fields(root, path: "", allowed: ["agents", "routing", "default_agent", "max_concurrent"])
        var config = AgentsConfig.none
        config.source = source
        config.maxConcurrent = try reader.int("max_concurrent", range: 1...1024) ?? 16
        let agentNodes = try reader.list("agents") ?? []
        var names = Set<String>()
        for (i, node) in agentNodes.enumerated() {
            let agent = try parseAgent(node, path: "agents[\(i)]", secret: secret)
            guard names.insert(agent.name).inserted else {
                throw ConfigDocumentError(line: node.line, path: "agents[\(i)].name", message: "duplicate agent name \(agent.name)")
            }
            config.agents.append(agent)
        }
        for (i, node) in (try reader.list("routing") ?? []).enumerated() {
            let route = try Fields(node, path: "routing[\(i)]", allowed: ["keywords", "pattern", "agent"])
            let matcher = try route.matcher()
            let agent = try route.string("agent", required: true)!
            guard names.contains(agent) else { throw route.error("agent", "no agent named \(agent) is defined") }
            config.routes.append(RouteRule(matcher: matcher, agent: agent))
        }
        if let name = try reader.string("default_agent") {
            guard names.contains(name) else { throw reader.error("default_agent", "no agent named \(name) is defined") }
            config.defaultAgent = name
        }
        // Handoff targets must exist.
        for (i, agent) in config.agents.enumerated() {
            guard case .rules(let intents, _) = agent.kind else { continue }
            for (j, intent) in intents.enumerated() {
                if case .agent(let target)? = intent.handoff, !names.contains(target) {
                    throw ConfigDocumentError(line: agentNodes[i].line, path: "agents[\(i)].intents[\(j)].handoff", message: "no agent named \(target) is defined (use an agent's name or human)")
                }
            }
        }
        return config
    }

    /// 1–64 of a-z, 0-9, `_`, `-`, starting with a letter or digit.
    static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        func ok(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
        return (1...64).contains(bytes.count) && ok(bytes[0]) && bytes.allSatisfy { ok($0) || $0 == 0x5F || $0 == 0x2D }
    }

    private static func parseAgent(_ node: ConfigNode, path: String, secret: (String) -> String?) throws -> AgentDefinition {
        let fields = try Fields(node, path: path, allowed: nil)
        let name = try fields.string("name", required: true)!
        guard isValidName(name), name != "human" else {
            throw fields.error("name", "must be 1–64 of a-z, 0-9, _ and -, starting with a letter or digit (and not `human`)")
        }
        let kindName = try fields.string("kind", required: true)!
        var common: Set<String> = ["name", "kind", "description", "history", "breaker"]
        let description = try fields.string("description")
        let kind: AgentDefinition.Kind
        var defaultHistory = 10
        switch kindName {
        case "echo":
            common.insert("prefix")
            kind = .echo(prefix: try fields.string("prefix") ?? "")
            defaultHistory = 0
        case "rules":
            common.formUnion(["intents", "fallback"])
            var intents: [RuleIntent] = []
            for (i, intentNode) in (try fields.list("intents") ?? []).enumerated() {
                let intent = try Fields(intentNode, path: "\(path).intents[\(i)]", allowed: ["keywords", "pattern", "reply", "handoff", "resolve"])
                let matcher = try intent.matcher()
                let reply = try intent.string("reply")
                // A message has 1 to 10,000 characters: an empty reply would be stored as an empty message.
                if reply?.trimmingWhitespace().isEmpty == true { throw intent.error("reply", "must not be empty (leave it out for no reply)") }
                let handoff = try intent.string("handoff").map(HandoffTarget.init)
                let resolve = try intent.bool("resolve") ?? false
                guard reply != nil || handoff != nil || resolve else {
                    throw intent.error("", "an intent needs a reply, a handoff or resolve: true")
                }
                intents.append(RuleIntent(matcher: matcher, reply: reply, handoff: handoff, resolve: resolve))
            }
            let fallback = try fields.string("fallback")
            if fallback?.trimmingWhitespace().isEmpty == true { throw fields.error("fallback", "must not be empty (leave it out for no reply)") }
            kind = .rules(intents: intents, fallback: fallback)
            defaultHistory = 0
        case "webhook":
            common.formUnion(["url", "secret_env", "timeout", "retries"])
            let url = try fields.url("url")
            let secretKey = try fields.string("secret_env", required: true)!
            guard let value = secret(secretKey), !value.isEmpty else {
                throw fields.error("secret_env", "\(secretKey) is not set in the env file or the environment")
            }
            kind = .webhook(
                url: url, secret: value, timeout: try fields.duration("timeout") ?? .seconds(10), retries: try fields.int("retries", range: 0...5) ?? 2
            )
        case "openai":
            common.formUnion(["base_url", "model", "api_key_env", "system_prompt", "timeout", "retries", "temperature", "max_tokens"])
            let baseURL = try fields.url("base_url")
            let model = try fields.string("model", required: true)!
            var apiKey: String?
            if let key = try fields.string("api_key_env") {
                guard let value = secret(key), !value.isEmpty else {
                    throw fields.error("api_key_env", "\(key) is not set in the env file or the environment")
                }
                apiKey = value
            }
            let temperature = try fields.number("temperature", range: 0...2)
            kind = .openai(
                baseURL: baseURL, model: model, apiKey: apiKey, systemPrompt: try fields.string("system_prompt"),
                timeout: try fields.duration("timeout") ?? .seconds(60), retries: try fields.int("retries", range: 0...5) ?? 1,
                temperature: temperature, maxTokens: try fields.int("max_tokens", range: 1...1_000_000)
            )
            defaultHistory = 20
        default:
            throw fields.error("kind", "must be one of echo, rules, webhook, openai")
        }
        try fields.refuseUnknown(allowed: common)
        let history = try fields.int("history", range: 0...200) ?? defaultHistory
        var breaker = BreakerSettings()
        if let breakerNode = fields.node("breaker") {
            let b = try Fields(breakerNode, path: "\(path).breaker", allowed: ["failures", "cooldown"])
            breaker.failures = try b.int("failures", range: 1...1000) ?? breaker.failures
            breaker.cooldown = try b.duration("cooldown") ?? breaker.cooldown
        }
        return AgentDefinition(name: name, description: description, kind: kind, history: history, breaker: breaker)
    }
}

/// Typed access to a mapping's fields, with errors naming the field's path and line.
struct Fields {
    let path: String
    let line: Int
    var values: [String: ConfigNode] = [:]

    init(_ node: ConfigNode, path: String, allowed: Set<String>?) throws {
        self.path = path
        self.line = node.line
        guard case .map(let fields, _) = node else {
            throw ConfigDocumentError(line: node.line, path: path, message: "must be a mapping of `key: value` fields")
        }
        for (key, value) in fields { values[key] = value }
        if let allowed { try refuseUnknown(allowed: allowed) }
    }

    func refuseUnknown(allowed: Set<String>) throws {
        for key in values.keys.sorted() where !allowed.contains(key) {
            throw ConfigDocumentError(line: values[key]!.line, path: join(key), message: "unknown field (allowed: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    func join(_ key: String) -> String {
        key.isEmpty ? path : (path.isEmpty ? key : "\(path).\(key)")
    }

    func error(_ key: String, _ message: String) -> ConfigDocumentError {
        ConfigDocumentError(line: values[key]?.line ?? line, path: join(key), message: message)
    }

    func node(_ key: String) -> ConfigNode? {
        guard let node = values[key] else { return nil }
        if case .scalar(let text, false, _) = node, text == "null" || text == "~" || text.isEmpty { return nil }
        return node
    }

    func string(_ key: String, required: Bool = false) throws -> String? {
        guard let node = node(key) else {
            if required { throw error(key, "is required") }
            return nil
        }
        guard case .scalar(let text, _, _) = node else { throw error(key, "must be text") }
        guard text.count <= 10_000 else { throw error(key, "is longer than 10000 characters") }
        if required, text.isEmpty { throw error(key, "must not be empty") }
        return text
    }

    func int(_ key: String, range: ClosedRange<Int>) throws -> Int? {
        guard let text = try string(key) else { return nil }
        guard let n = Int(text), range.contains(n) else { throw error(key, "must be a whole number in \(range.lowerBound)...\(range.upperBound)") }
        return n
    }

    func number(_ key: String, range: ClosedRange<Double>) throws -> Double? {
        guard let text = try string(key) else { return nil }
        guard let n = Double(text), range.contains(n) else { throw error(key, "must be a number in \(range.lowerBound)...\(range.upperBound)") }
        return n
    }

    func bool(_ key: String) throws -> Bool? {
        guard let text = try string(key) else { return nil }
        switch text {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error(key, "must be true or false")
        }
    }

    /// `250ms`, `10s`, `2m`: between 1 ms and 1 hour.
    func duration(_ key: String) throws -> Duration? {
        guard let text = try string(key) else { return nil }
        let duration: Duration?
        if text.hasSuffix("ms"), let ms = Int(text.dropLast(2)) {
            duration = .milliseconds(ms)
        } else {
            duration = DurationText.parse(text).map { .seconds($0) }
        }
        guard let duration, duration >= .milliseconds(1), duration <= .seconds(3600) else {
            throw error(key, "must be a duration like 500ms, 10s or 2m (at most 1h)")
        }
        return duration
    }

    func url(_ key: String) throws -> String {
        let text = try string(key, required: true)!
        let host = text.hasPrefix("http://") ? text.dropFirst(7) : text.hasPrefix("https://") ? text.dropFirst(8) : ""
        guard let first = host.first, first != "/", first != ":", !text.contains(where: { $0 == " " || $0.isNewline }) else {
            throw error(key, "must be an http:// or https:// URL")
        }
        return text
    }

    func list(_ key: String) throws -> [ConfigNode]? {
        guard let node = node(key) else { return nil }
        guard case .list(let items, _) = node else { throw error(key, "must be a list") }
        return items
    }

    func strings(_ key: String) throws -> [String]? {
        guard let items = try list(key) else { return nil }
        return try items.enumerated().map { i, item in
            guard case .scalar(let text, _, _) = item, !text.isEmpty else {
                throw ConfigDocumentError(line: item.line, path: "\(join(key))[\(i)]", message: "must be non-empty text")
            }
            return text
        }
    }

    /// `keywords: [...]` and/or `pattern: regex`; at least one.
    func matcher() throws -> MessageMatcher {
        let keywords = try strings("keywords") ?? []
        let pattern = try string("pattern")
        guard !keywords.isEmpty || pattern != nil else { throw error("", "needs keywords or a pattern") }
        do {
            return try MessageMatcher(keywords: keywords, pattern: pattern)
        } catch {
            throw self.error("pattern", "is not a valid regular expression: \(error)")
        }
    }
}
