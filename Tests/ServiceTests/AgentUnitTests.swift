import Foundation
import NIOCore
import Testing
@testable import Service
@testable import Storage

@Suite("Agents: config documents, matching, breaker, wire formats")
struct AgentUnitTests {
    func scalar(_ node: ConfigNode?) -> String? {
        if case .scalar(let text, _, _)? = node { return text }
        return nil
    }

    func field(_ node: ConfigNode, _ key: String) -> ConfigNode? {
        if case .map(let fields, _) = node { return fields.first { $0.key == key }?.value }
        return nil
    }

    @Test("YAML subset: nesting, sequences of mappings, quoting, comments, block scalars, flow lists, line numbers")
    func yaml() throws {
        let text = """
            # comment
            top: plain value # trailing comment
            quoted: "a # not a comment \\u00e9"
            single: 'it''s'
            list: [a, "b, c", 'd']
            nested:
              inner: 1
            items:
              - name: first
                extra: x
              - second
            items2:
            - name: at key indent
            literal: |
              line one

              line three
            folded: >-
              folded
              text
            empty:
            """
        let root = try ConfigDocument.parse(text)
        #expect(scalar(field(root, "top")) == "plain value")
        #expect(scalar(field(root, "quoted")) == "a # not a comment é")
        #expect(scalar(field(root, "single")) == "it's")
        guard case .list(let list, _)? = field(root, "list") else { Issue.record("list"); return }
        #expect(list.compactMap(scalar) == ["a", "b, c", "d"])
        #expect(scalar(field(try #require(field(root, "nested")), "inner")) == "1")
        guard case .list(let items, _)? = field(root, "items") else { Issue.record("items"); return }
        #expect(items.count == 2)
        #expect(scalar(field(items[0], "extra")) == "x")
        #expect(items[0].line == 9)
        #expect(scalar(items[1]) == "second")
        guard case .list(let items2, _)? = field(root, "items2") else { Issue.record("items2"); return }
        #expect(scalar(field(items2[0], "name")) == "at key indent")
        #expect(scalar(field(root, "literal")) == "line one\n\nline three\n")
        #expect(scalar(field(root, "folded")) == "folded text")
        #expect(scalar(field(root, "empty")) == "null")
        #expect(field(root, "top")?.line == 2)
    }

    @Test("YAML errors name the line", arguments: [
        ("a: 1\na: 2\n", "line 2: a: duplicate key"),
        ("a:\n\t- x\n", "line 2: tabs are not allowed"),
        ("a: &anchor x\n", "line 1: anchors, aliases"),
        ("a: \"open\n", "line 1: unterminated double-quoted string"),
        ("a: 1\n  b: 2\n", "line 2: unexpected indentation"),
        ("a: [x, [y]]\n", "line 1: nested"),
        ("a: 1\n---\nb: 2\n", "line 2: only one document"),
        ("just text\nmore: x\n", "line 2"),
    ])
    func yamlErrors(_ text: String, _ expected: String) {
        do {
            _ = try ConfigDocument.parse(text)
            Issue.record("parsed: \(text)")
        } catch {
            #expect("\(error)".hasPrefix(expected), "\(error)")
        }
    }

    @Test("an error about a list or mapping names its key's line; a short secret from the environment is named")
    func webhooksFileErrors() {
        func message(_ text: String, env: [String: String] = [:]) -> String {
            do {
                _ = try WebhooksConfig.parse(text) { env[$0] }
                return "parsed"
            } catch {
                return "\(error)"
            }
        }
        #expect(message("hooks:\n  - name: a\n").hasPrefix("line 1: hooks: unknown field"))
        let short = "webhooks:\n  - name: crm\n    url: https://crm.example.com/x\n    secret_env: CRM\n    events: [message.created]\n"
        #expect(message(short, env: ["CRM": "short"]) == "line 4: webhooks[0].secret_env: CRM must be at least 16 characters")
        #expect(message(short, env: ["CRM": "long-enough-secret-value"]) == "parsed")
    }

    @Test("a rules agent's reply or fallback may be left out, not empty (it would be stored as an empty message)")
    func emptyReplies() throws {
        for text in ["agents:\n  - name: r\n    kind: rules\n    fallback: \"\"\n",
                     "agents:\n  - name: r\n    kind: rules\n    intents:\n      - keywords: [hi]\n        reply: \"  \"\n"] {
            #expect(throws: ConfigDocumentError.self) { try AgentsConfig.parse(text, source: "t", secret: { _ in nil }) }
        }
        _ = try AgentsConfig.parse("agents:\n  - name: r\n    kind: rules\n    fallback:\n", source: "t", secret: { _ in nil })
    }

    @Test("keywords match whole words case-insensitively; patterns are regular expressions")
    func matcher() throws {
        let keywords = try MessageMatcher(keywords: ["Refund", "credit card"], pattern: nil)
        #expect(keywords.matches("I want a REFUND now"))
        #expect(!keywords.matches("refunds are great"))
        #expect(keywords.matches("my Credit Card was charged"))
        let pattern = try MessageMatcher(keywords: [], pattern: "(?i)order #?\\d{4,}")
        #expect(pattern.matches("Where is Order #12345?"))
        #expect(!pattern.matches("order 12"))
        #expect(throws: (any Error).self) { try MessageMatcher(keywords: [], pattern: "(unclosed") }
    }

    @Test("the breaker opens after N failures, lets one trial through after the cooldown, and closes on success")
    func breaker() {
        let breaker = CircuitBreaker(BreakerSettings(failures: 2, cooldown: .seconds(10)))
        let t0 = ContinuousClock.now
        #expect(breaker.permit(now: t0))
        breaker.failed(now: t0)
        #expect(!breaker.isOpen && breaker.permit(now: t0))
        breaker.failed(now: t0)
        #expect(breaker.isOpen)
        #expect(!breaker.permit(now: t0.advanced(by: .seconds(9))))
        let later = t0.advanced(by: .seconds(11))
        #expect(breaker.permit(now: later))
        #expect(!breaker.permit(now: later), "only one trial at a time")
        breaker.failed(now: later)
        #expect(!breaker.permit(now: later.advanced(by: .seconds(5))), "a failed trial opens it again")
        let again = later.advanced(by: .seconds(11))
        #expect(breaker.permit(now: again))
        breaker.succeeded()
        #expect(!breaker.isOpen && breaker.permit(now: again) && breaker.permit(now: again))
    }

    @Test("an over-long event-stream line or event fails the stream instead of losing data")
    func serverSentEventsLimits() throws {
        var parser = ServerSentEvents()
        let chunk = String(repeating: "x", count: 64 * 1024)
        var failed = false
        for _ in 0..<((ServerSentEvents.maxLine / chunk.utf8.count) + 2) {
            do { _ = try parser.feed(ByteBuffer(string: chunk)) } catch { failed = true; break }
        }
        #expect(failed, "a line without an end past maxLine must fail")
        var events = ServerSentEvents()
        let half = "data: " + String(repeating: "y", count: ServerSentEvents.maxLine / 2) + "\n"
        #expect(try events.feed(ByteBuffer(string: half)).isEmpty)
        #expect(throws: AgentFailure.self) { _ = try events.feed(ByteBuffer(string: half + half + "\n")) }
    }

    @Test("server-sent events split across buffers, with CRLF, comments and multi-line data")
    func serverSentEvents() throws {
        var parser = ServerSentEvents()
        #expect(try parser.feed(ByteBuffer(string: ": keep-alive\r\ndata: {\"a\"")).isEmpty)
        #expect(try parser.feed(ByteBuffer(string: ":1}\r\n\r\ndata: x\ndata: y\n\ndata: [DONE]\n\n")) == ["{\"a\":1}", "x\ny", "[DONE]"])
        #expect(try OpenAIAgent.chunk(#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#) == ("Hi", nil))
        #expect(try OpenAIAgent.chunk(#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#) == (nil, "stop"))
        #expect(throws: AgentFailure.self) { _ = try OpenAIAgent.chunk("not json") }
        #expect(throws: AgentFailure.self) { _ = try OpenAIAgent.chunk(#"{"error":{"message":"quota"}}"#) }
        let done = try OpenAIAgent.completion(#"{"choices":[{"message":{"role":"assistant","content":"Do\u0000ne"},"finish_reason":"stop"}]}"#, model: "m")
        #expect(done == AgentReply(text: "Done", metadata: ["model": "m", "finishReason": "stop"]))
    }

    @Test("server-sent event lines may end with CR alone, also when a CRLF is split between reads")
    func serverSentEventsWithCR() throws {
        var parser = ServerSentEvents()
        #expect(try parser.feed(ByteBuffer(string: "data: a\r\rdata: b\r")) == ["a"])
        #expect(try parser.feed(ByteBuffer(string: "\n\r\ndata: c\r\n\r\n")) == ["b", "c"])
    }

    @Test("webhook answers are validated field by field")
    func webhookReply() throws {
        let full = try WebhookAgent.reply([
            "reply": "ok", "handoff": "human", "resolve": .bool(true), "metadata": .object(["k": "v"]),
        ])
        #expect(full == AgentReply(text: "ok", handoff: .human, resolve: true, metadata: ["k": "v"]))
        #expect(try WebhookAgent.reply(["handoff": "billing"]).handoff == .agent("billing"))
        let bads: [[String: JSONValue]] = [["reply": .int(5)], ["resolve": "yes"], ["metadata": "x"], ["surprise": .bool(true)], ["handoff": ""]]
        for bad in bads {
            #expect(throws: AgentFailure.self) { try WebhookAgent.reply(bad) }
        }
        let long = try WebhookAgent.reply(["reply": .string(String(repeating: "x", count: 20_000))])
        #expect(long.text?.count == maxReplyCharacters)
    }

    @Test("the webhook signature is HMAC-SHA256 over timestamp.body")
    func signature() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        let sig = WebhookAgent.signature(secret: Array("secret".utf8), timestamp: "1700000000", body: Array(#"{"a":1}"#.utf8))
        #expect(sig == "sha256=" + Crypto.hex(Crypto.hmacSHA256(key: Array("secret".utf8), data: Array(#"1700000000.{"a":1}"#.utf8))))
        #expect(sig.count == 7 + 64)
    }

    @Test("agents files: a full valid file, and JSON")
    func agentsFile() throws {
        let text = """
            default_agent: front
            max_concurrent: 8
            routing:
              - pattern: "(?i)invoice"
                agent: hook
            agents:
              - name: front
                kind: rules
                intents:
                  - keywords: [hi]
                    reply: hello
                fallback: sorry
              - name: hook
                kind: webhook
                url: https://example.com/hook
                secret_env: HOOK_SECRET
                timeout: 500ms
                breaker: {failures: 3}
            """
        // `{…}` mappings are refused in YAML here; the error names the line.
        #expect(throws: ConfigDocumentError.self) { try AgentsConfig.parse(text, source: "t", secret: { _ in "s" }) }
        let fixed = text.replacingOccurrences(of: "breaker: {failures: 3}", with: "breaker:\n      failures: 3")
        let config = try AgentsConfig.parse(fixed, source: "t", secret: { $0 == "HOOK_SECRET" ? "s3cret" : nil })
        #expect(config.agentNames == ["front", "hook"])
        #expect(config.defaultAgent == "front" && config.maxConcurrent == 8)
        #expect(config.agent(named: "hook")?.breaker == BreakerSettings(failures: 3, cooldown: .seconds(30)))
        guard case .webhook(_, let secret, let timeout, let retries)? = config.agent(named: "hook")?.kind else { Issue.record("kind"); return }
        #expect(secret == "s3cret" && timeout == .milliseconds(500) && retries == 2)
        let json = try AgentsConfig.parse(#"{"agents":[{"name":"e","kind":"echo","history":3}]}"#, source: "j", secret: { _ in nil })
        #expect(json.agentNames == ["e"] && json.agent(named: "e")?.history == 3)
    }
}
