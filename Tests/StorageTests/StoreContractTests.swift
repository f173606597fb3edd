import Foundation
import Testing
@testable import Storage

/// The contract every `ChatStore` must meet; runs against each backend in `StoreBackends.all`.
@Suite("ChatStore contract")
struct StoreContractTests {
    static let backends = StoreBackends.all

    @Test("migrations are applied once and listed", arguments: backends)
    func migrations(_ make: @Sendable () -> StoreFixture) async throws {
        let fixture = make()
        defer { fixture.cleanup() }
        let first = try await fixture.open()
        let status = try await first.migrationStatus()
        await first.close()
        #expect(status.map(\.version) == Array(1...9))
        #expect(status.allSatisfy { $0.appliedAt != nil })
        let second = try await fixture.open()
        #expect(try await second.migrationStatus() == status)
        await second.close()
    }

    @Test("migration status is reported against the store's own migration set", arguments: backends)
    func ownMigrationSet(_ make: @Sendable () -> StoreFixture) async throws {
        let fixture = make()
        defer { fixture.cleanup() }
        let extra = Migration(version: 999, fileName: "V999__add_extra_table.sql", sql: "CREATE TABLE extra_table (id INTEGER PRIMARY KEY)")
        let store = try await fixture.openWith(extra)
        let status = try await store.migrationStatus()
        await store.close()
        #expect(status.last?.version == 999 && status.last?.name == "add_extra_table" && status.last?.appliedAt != nil, "\(status)")
    }

    @Test("users: create, find case-insensitively, refuse a taken name", arguments: backends)
    func users(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let alice = Make.user("Alice")
            try await store.createUser(alice)
            #expect(try await store.user(username: "alice") == alice)
            #expect(try await store.user(id: alice.id) == alice)
            #expect(try await store.user(username: "bob") == nil)
            let error = await #expect(throws: StoreError.self) { try await store.createUser(Make.user("ALICE")) }
            #expect(error?.kind == .conflict)
        }
    }

    @Test("sessions: create, list with filters and paging, resume, resolve, delete", arguments: backends)
    func sessions(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let owner = Make.user()
            try await store.createUser(owner)
            let base = Timestamp.now()
            var created: [ChatSession] = []
            for i in 0..<5 {
                let s = Make.session(userId: owner.id, now: base.addingTimeInterval(Double(i)), metadata: .object(["n": .int(Int64(i))]))
                try await store.createSession(s)
                created.append(s)
            }
            try await store.createSession(Make.session(userId: UUID()))
            #expect(try await store.session(id: created[2].id) == created[2])

            let page = try await store.sessions(SessionQuery(userId: owner.id, limit: 2, offset: 1))
            #expect(page.total == 5)
            #expect(page.sessions.map(\.id) == [created[3].id, created[2].id])

            let resolved = try #require(try await store.resolveSession(id: created[0].id, now: base))
            #expect(resolved.isResolved && resolved.state == .resolved && resolved.resolvedAt != nil)
            #expect(try await store.resolveSession(id: created[0].id, now: base.addingTimeInterval(5)) == resolved)
            #expect(try await store.sessions(SessionQuery(userId: owner.id, isResolved: true)).sessions.map(\.id) == [created[0].id])
            #expect(try await store.sessions(SessionQuery(userId: owner.id, state: .active)).total == 4)

            #expect(try await store.resumeSession(id: created[0].id, expiresAt: base, now: base) == .resolved)
            #expect(try await store.resumeSession(id: UUID(), expiresAt: base, now: base) == .notFound)
            let later = base.addingTimeInterval(7200)
            guard case .resumed(let resumed) = try await store.resumeSession(id: created[1].id, expiresAt: later, now: base) else {
                Issue.record("expected resumed")
                return
            }
            #expect(resumed.expiresAt == later && resumed.state == .active)

            try await store.appendMessage(Make.message(created[1].id, userId: owner.id), now: base).expectCreated()
            #expect(try await store.deleteSession(id: created[1].id))
            #expect(try await store.deleteSession(id: created[1].id) == false)
            #expect(try await store.session(id: created[1].id) == nil)
            #expect(try await store.messages(MessageQuery(sessionId: created[1].id)).messages.isEmpty)
        }
    }

    @Test("agent routing: assign once, hand off to humans, claim, list the queue, copy keeps it", arguments: backends)
    func agentRouting(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let owner = Make.user()
            let staff = Make.user(role: .agent)
            let other = Make.user(role: .agent)
            for u in [owner, staff, other] { try await store.createUser(u) }
            let now = Timestamp.now()
            let session = Make.session(userId: owner.id)
            try await store.createSession(session)

            let routed = try #require(try await store.assignAgent(sessionId: session.id, agent: "front", ifUnrouted: true, now: now))
            #expect(routed.agent == "front" && routed.handoff == nil)
            // ifUnrouted leaves a routed session alone; a plain assign replaces the agent.
            #expect(try await store.assignAgent(sessionId: session.id, agent: "other", ifUnrouted: true, now: now)?.agent == "front")
            #expect(try await store.assignAgent(sessionId: session.id, agent: "billing", ifUnrouted: false, now: now)?.agent == "billing")
            #expect(try await store.assignAgent(sessionId: UUID(), agent: "x", ifUnrouted: false, now: now) == nil)

            #expect(try await store.claimHandoff(sessionId: session.id, assignee: staff.id, now: now) == .unavailable(try #require(try await store.session(id: session.id))))
            let waiting = try #require(try await store.requestHandoff(sessionId: session.id, now: now))
            #expect(waiting.agent == nil && waiting.handoff == .waiting && waiting.assigneeId == nil && waiting.handoffAt != nil)
            #expect(try await store.assignAgent(sessionId: session.id, agent: "front", ifUnrouted: true, now: now)?.handoff == .waiting)
            #expect(try await store.handoffs(assignee: staff.id, limit: 10).map(\.id) == [session.id])

            guard case .claimed(let claimed) = try await store.claimHandoff(sessionId: session.id, assignee: staff.id, now: now) else {
                Issue.record("claim failed")
                return
            }
            #expect(claimed.handoff == .assigned && claimed.assigneeId == staff.id)
            #expect(try await store.claimHandoff(sessionId: session.id, assignee: staff.id, now: now) == .claimed(try #require(try await store.session(id: session.id))))
            guard case .unavailable = try await store.claimHandoff(sessionId: session.id, assignee: other.id, now: now) else {
                Issue.record("a second agent took an assigned session")
                return
            }
            #expect(try await store.claimHandoff(sessionId: UUID(), assignee: other.id, now: now) == .notFound)
            #expect(try await store.handoffs(assignee: staff.id, limit: 10).map(\.id) == [session.id])
            #expect(try await store.handoffs(assignee: other.id, limit: 10).isEmpty)
            #expect(try await store.handoffs(assignee: nil, limit: 10).map(\.id) == [session.id])
            // The columns survive a round trip through export and import.
            #expect(try await store.exportSessions(after: nil, limit: 10) == [try #require(try await store.session(id: session.id))])

            let back = try #require(try await store.assignAgent(sessionId: session.id, agent: "front", ifUnrouted: false, now: now))
            #expect(back.agent == "front" && back.handoff == nil && back.assigneeId == nil && back.handoffAt == nil)
            #expect(try await store.handoffs(assignee: nil, limit: 10).isEmpty)
        }
    }

    @Test("expired sessions are swept and refuse messages until resumed", arguments: backends)
    func expiry(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let now = Timestamp.now()
            let session = Make.session(userId: UUID(), ttl: 10, now: now)
            try await store.createSession(session)
            #expect(try await store.sweepExpired(now: now) == 0)
            #expect(try await store.appendMessage(Make.message(session.id, userId: nil), now: now.addingTimeInterval(11)) == .sessionExpired)
            #expect(try await store.sweepExpired(now: now.addingTimeInterval(11)) == 1)
            #expect(try await store.session(id: session.id)?.state == .expired)
            #expect(try await store.appendMessage(Make.message(session.id, userId: nil), now: now) == .sessionExpired)
            _ = try await store.resumeSession(id: session.id, expiresAt: now.addingTimeInterval(100), now: now)
            try await store.appendMessage(Make.message(session.id, userId: nil), now: now).expectCreated()
            #expect(try await store.appendMessage(Make.message(UUID(), userId: nil), now: now) == .sessionNotFound)
        }
    }

    @Test("messages page in id order with after, before and limit", arguments: backends)
    func paging(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let session = Make.session(userId: UUID())
            try await store.createSession(session)
            var ids: [UUID] = []
            for i in 0..<25 {
                let outcome = try await store.appendMessage(Make.message(session.id, userId: session.userId, content: "m\(i)"), now: Timestamp.now())
                guard case .created(let m) = outcome else {
                    Issue.record("not created: \(outcome)")
                    return
                }
                ids.append(m.id)
            }
            let first = try await store.messages(MessageQuery(sessionId: session.id, limit: 10))
            #expect(first.messages.map(\.id) == Array(ids[0..<10]) && first.hasMore)
            let second = try await store.messages(MessageQuery(sessionId: session.id, after: ids[9], limit: 10))
            #expect(second.messages.map(\.id) == Array(ids[10..<20]) && second.hasMore)
            let last = try await store.messages(MessageQuery(sessionId: session.id, after: ids[19], limit: 10))
            #expect(last.messages.map(\.id) == Array(ids[20...]) && !last.hasMore)
            let back = try await store.messages(MessageQuery(sessionId: session.id, before: ids[5], limit: 3))
            #expect(back.messages.map(\.id) == Array(ids[2..<5]) && back.hasMore)
            let between = try await store.messages(MessageQuery(sessionId: session.id, after: ids[3], before: ids[7], limit: 50))
            #expect(between.messages.map(\.id) == Array(ids[4..<7]))
            let one = try #require(try await store.message(sessionId: session.id, id: ids[4]))
            #expect(one.content == "m4" && one.metadata == .object(["k": .int(1)]))
            #expect(try await store.message(sessionId: UUID(), id: ids[4]) == nil)
            // The session and a page together: the same page, and nothing for an unknown session.
            let together = try #require(try await store.sessionMessages(MessageQuery(sessionId: session.id, after: ids[9], limit: 10)))
            #expect(together.session.id == session.id && together.session.userId == session.userId)
            #expect(together.page.messages.map(\.id) == second.messages.map(\.id) && together.page.hasMore)
            #expect(try await store.sessionMessages(MessageQuery(sessionId: UUID(), limit: 10)) == nil)
        }
    }

    @Test("concurrent retries with one clientMessageId store one message", arguments: backends)
    func idempotentSends(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let session = Make.session(userId: UUID())
            try await store.createSession(session)
            let outcomes = try await withThrowingTaskGroup(of: AppendOutcome.self) { group in
                for _ in 0..<20 {
                    group.addTask { try await store.appendMessage(Make.message(session.id, userId: nil, clientId: "retry-1"), now: Timestamp.now()) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let created = outcomes.filter { if case .created = $0 { true } else { false } }
            #expect(created.count == 1)
            let ids = Set(outcomes.compactMap { outcome -> UUID? in
                switch outcome {
                case .created(let m), .duplicate(let m): m.id
                default: nil
                }
            })
            #expect(ids.count == 1)
            #expect(try await store.messages(MessageQuery(sessionId: session.id)).messages.count == 1)
        }
    }

    @Test("many concurrent writes all commit (group commit)", arguments: backends)
    func groupCommit(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let session = Make.session(userId: UUID())
            try await store.createSession(session)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<400 {
                    group.addTask { try await store.appendMessage(Make.message(session.id, userId: nil, content: "c\(i)"), now: Timestamp.now()).expectCreated() }
                }
                try await group.waitForAll()
            }
            var count = 0
            var after: UUID?
            while true {
                let page = try await store.messages(MessageQuery(sessionId: session.id, after: after, limit: 200))
                count += page.messages.count
                after = page.messages.last?.id
                if !page.hasMore { break }
            }
            #expect(count == 400)
            #expect(try await store.statistics().totalMessages == 400)
        }
    }

    @Test("one failing write among concurrent ones fails alone", arguments: backends)
    func failureIsolation(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, fixture in
            let session = Make.session(userId: UUID())
            try await store.createSession(session)
            // A 40-character type fits SQLite's TEXT but not Postgres' VARCHAR(32): there it fails inside a batch.
            var odd = Make.message(session.id, userId: nil, content: "odd")
            odd.type = String(repeating: "t", count: 40)
            let results = await withTaskGroup(of: (Bool, Result<AppendOutcome, any Error>).self) { group in
                for i in 0..<60 {
                    let message = i == 20 ? odd : Make.message(session.id, userId: nil, content: "m\(i)")
                    group.addTask { (i == 20, await Result(catching: { try await store.appendMessage(message, now: Timestamp.now()) })) }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let others = results.filter { !$0.0 }.map(\.1)
            #expect(others.allSatisfy { if case .success(.created) = $0 { true } else { false } }, "\(fixture.name)")
            let oddFailed = results.first { $0.0 }.map { if case .failure = $0.1 { true } else { false } } ?? false
            #expect(try await store.statistics().totalMessages == (oddFailed ? 59 : 60), "\(fixture.name)")
            #expect(oddFailed == (fixture.name == "postgres"))
        }
    }

    @Test("message ids are assigned by the store in commit order", arguments: backends)
    func idsInCommitOrder(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let session = Make.session(userId: UUID())
            try await store.createSession(session)
            let stored = try await withThrowingTaskGroup(of: ChatMessage.self) { group in
                for i in 0..<100 {
                    group.addTask {
                        guard case .created(let m) = try await store.appendMessage(Make.message(session.id, userId: nil, content: "\(i)"), now: Timestamp.now()) else {
                            throw StoreError(.failed, "not created")
                        }
                        return m
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let page = try await store.messages(MessageQuery(sessionId: session.id, limit: 200))
            #expect(Set(page.messages.map(\.id)) == Set(stored.map(\.id)))
            #expect(page.messages.map(\.id.lowercased) == page.messages.map(\.id.lowercased).sorted())
        }
    }

    @Test("refresh tokens rotate; reuse revokes the family", arguments: backends)
    func refreshTokens(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let user = Make.user()
            try await store.createUser(user)
            let now = Timestamp.now()
            let family = UUID()
            func record(_ hash: String, expires: Date = now.addingTimeInterval(3600)) -> RefreshTokenRecord {
                RefreshTokenRecord(id: UUID(), userId: user.id, familyId: family, tokenHash: hash, expiresAt: expires, createdAt: now)
            }
            try await store.insertRefreshToken(record("h1"))
            #expect(try await store.rotateRefreshToken(hash: "h1", replacement: record("h2"), now: now) == .rotated(userId: user.id, familyId: family))
            #expect(try await store.rotateRefreshToken(hash: "h1", replacement: record("h3"), now: now) == .reused(familyId: family))
            // The reuse revoked the whole family, so the newest token is dead too.
            #expect(try await store.rotateRefreshToken(hash: "h2", replacement: record("h4"), now: now) == .invalid)
            #expect(try await store.rotateRefreshToken(hash: "nope", replacement: record("h5"), now: now) == .invalid)

            let other = UUID()
            try await store.insertRefreshToken(RefreshTokenRecord(id: UUID(), userId: user.id, familyId: other, tokenHash: "old", expiresAt: now, createdAt: now))
            #expect(try await store.rotateRefreshToken(hash: "old", replacement: record("h6"), now: now.addingTimeInterval(1)) == .expired)

            try await store.insertRefreshToken(RefreshTokenRecord(id: UUID(), userId: user.id, familyId: other, tokenHash: "x1", expiresAt: now.addingTimeInterval(60), createdAt: now))
            try await store.revokeRefreshFamily(other, now: now)
            #expect(try await store.rotateRefreshToken(hash: "x1", replacement: record("h7"), now: now) == .invalid)

            #expect(try await store.isAccessTokenRevoked(jti: "j1") == false)
            try await store.revokeAccessToken(jti: "j1", expiresAt: now.addingTimeInterval(60))
            try await store.revokeAccessToken(jti: "j1", expiresAt: now.addingTimeInterval(60))
            #expect(try await store.isAccessTokenRevoked(jti: "j1"))
        }
    }

    @Test("statistics count users, sessions by state and messages", arguments: backends)
    func statistics(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            try await store.createUser(Make.user())
            let a = Make.session(userId: UUID())
            let b = Make.session(userId: UUID())
            try await store.createSession(a)
            try await store.createSession(b)
            try await store.appendMessage(Make.message(a.id, userId: nil), now: Timestamp.now()).expectCreated()
            try await store.appendMessage(Make.message(a.id, userId: nil), now: Timestamp.now()).expectCreated()
            _ = try await store.resolveSession(id: b.id, now: Timestamp.now())
            let stats = try await store.statistics()
            #expect(stats == SessionStatistics(totalSessions: 2, activeSessions: 1, expiredSessions: 0, resolvedSessions: 1, totalMessages: 2, totalUsers: 1))
        }
    }

    @Test("export pages start at the first record (even the nil UUID) and follow the cursor", arguments: backends)
    func exportPaging(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            var users = [Make.user()]
            users[0].id = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            for _ in 0..<4 { users.append(Make.user()) }
            for user in users { try await store.createUser(user) }
            let sorted = users.sorted { $0.id.lowercased < $1.id.lowercased }
            var pages: [[User]] = []
            var cursor: UUID?
            while case let page = try await store.exportUsers(after: cursor, limit: 2), let last = page.last {
                pages.append(page)
                cursor = last.id
            }
            #expect(pages.map(\.count) == [2, 2, 1])
            #expect(pages.flatMap { $0 } == sorted)
        }
    }

    @Test("copy through export and import keeps every column of every record", arguments: backends)
    func copyKeepsEverything(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { source, _ in
            let now = Timestamp.now()
            var user = Make.user(role: .agent)
            user.email = "a@example.com"
            try await source.createUser(user)
            // insertRefreshToken writes every column, used_at and revoked_at included.
            let token = RefreshTokenRecord(
                id: UUID(), userId: user.id, familyId: UUID(), tokenHash: String(repeating: "ab", count: 32), expiresAt: now.addingTimeInterval(60), createdAt: now,
                usedAt: now.addingTimeInterval(1), revokedAt: now.addingTimeInterval(2)
            )
            try await source.insertRefreshToken(token)
            #expect(try await source.exportRefreshTokens(after: nil, limit: 10) == [token])
            try await source.revokeAccessToken(jti: "jti-1", expiresAt: now.addingTimeInterval(60))
            let session = Make.session(userId: user.id, metadata: .object(["n": .int(1)]))
            try await source.createSession(session)
            _ = try await source.requestHandoff(sessionId: session.id, now: now)
            // A later time: an update that leaves updated_at as it was gets the database's own (finer) clock.
            _ = try await source.claimHandoff(sessionId: session.id, assignee: user.id, now: now.addingTimeInterval(1))
            try await source.appendMessage(Make.message(session.id, userId: user.id, clientId: "c1"), now: now).expectCreated()
            try await source.appendMessage(Make.message(session.id, userId: nil), now: now).expectCreated()
            // Only one of two waiting sessions when the limit says one.
            try await source.createSession(Make.session(userId: user.id))
            #expect(try await source.handoffs(assignee: nil, limit: 1).count == 1)

            let batch = RecordBatch(
                users: try await source.exportUsers(after: nil, limit: 100), sessions: try await source.exportSessions(after: nil, limit: 100),
                messages: try await source.exportMessages(after: nil, limit: 100), refreshTokens: try await source.exportRefreshTokens(after: nil, limit: 100),
                revokedAccessTokens: try await source.exportRevokedAccessTokens()
            )
            try await withStore(make) { target, _ in
                try await target.importRecords(batch)
                try await target.importRecords(batch)  // records already there are skipped
                #expect(try await target.recordCounts() == (try await source.recordCounts()))
                #expect(try await target.exportUsers(after: nil, limit: 100) == batch.users)
                #expect(try await target.exportSessions(after: nil, limit: 100) == batch.sessions)
                #expect(try await target.exportMessages(after: nil, limit: 100) == batch.messages)
                #expect(try await target.exportRefreshTokens(after: nil, limit: 100) == [token])
                #expect(try await target.exportRevokedAccessTokens() == batch.revokedAccessTokens)
                #expect(try await target.session(id: session.id) == (try await source.session(id: session.id)))
            }
        }
    }

    @Test("a closed store answers unavailable", arguments: backends)
    func closed(_ make: @Sendable () -> StoreFixture) async throws {
        let fixture = make()
        defer { fixture.cleanup() }
        let store = try await fixture.open()
        await store.close()
        do {
            try await store.createUser(Make.user())
            Issue.record("write after close succeeded")
        } catch let error as StoreError {
            #expect(error.kind == .unavailable)
        }
        do {
            try await store.ping()
            Issue.record("read after close succeeded")
        } catch let error as StoreError {
            #expect(error.kind == .unavailable)
        }
    }
}

extension AppendOutcome {
    func expectCreated(sourceLocation: SourceLocation = #_sourceLocation) {
        if case .created = self { return }
        Issue.record("expected created, got \(self)", sourceLocation: sourceLocation)
    }
}
