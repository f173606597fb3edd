import Foundation
import Synchronization
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
        #expect(status.map(\.version) == MigrationSet.sqlite.migrations.map(\.version))
        #expect(status.map(\.version) == Array(1...status.count))
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

    @Test("accounts: search and page, change role, disable, revoke logins, delete with their data", arguments: backends)
    func accounts(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let names = ["carol_1", "Carla", "dave", "100%_real", "caRl.x"]
            for (i, name) in names.enumerated() {
                var user = Make.user(name)
                user.createdAt = user.createdAt.addingTimeInterval(Double(i))
                try await store.createUser(user)
            }
            // Newest first.
            let all = try await store.users(UserQuery(limit: 100))
            #expect(all.users.map(\.username) == names.reversed() && all.total == 5)
            // A substring of the username, any case; % and _ are plain characters.
            #expect(try await store.users(UserQuery(search: "CAR")).users.map(\.username) == ["caRl.x", "Carla", "carol_1"])
            #expect(try await store.users(UserQuery(search: "%_")).users.map(\.username) == ["100%_real"])
            #expect(try await store.users(UserQuery(search: "l_")).users.map(\.username) == ["carol_1"])
            let paged = try await store.users(UserQuery(search: "a", limit: 2, offset: 2))
            #expect(paged.total == 5 && paged.users.map(\.username) == ["dave", "Carla"])

            let dave = try #require(try await store.user(username: "dave"))
            let carla = try #require(try await store.user(username: "Carla"))
            #expect(Set(try await store.users(ids: [dave.id, carla.id, dave.id, UUID()]).map(\.username)) == ["dave", "Carla"])
            #expect(try await store.users(ids: []).isEmpty)
            let now = Timestamp.now()
            let staff = try #require(try await store.updateUser(id: dave.id, UserChange(role: .agent), now: now))
            #expect(staff.role == .agent && staff.disabledAt == nil && staff.passwordHash == dave.passwordHash)
            #expect(try await store.users(UserQuery(role: .agent)).users.map(\.id) == [dave.id])
            let disabled = try #require(try await store.updateUser(id: dave.id, UserChange(disabled: true), now: now))
            #expect(disabled.disabledAt == now && disabled.role == .agent)
            // Disabling again keeps the first time; enabling clears it; a new password hash is stored.
            #expect(try await store.updateUser(id: dave.id, UserChange(disabled: true), now: now.addingTimeInterval(5))?.disabledAt == now)
            let enabled = try #require(try await store.updateUser(id: dave.id, UserChange(disabled: false, passwordHash: "$scrypt$new"), now: now))
            #expect(enabled.disabledAt == nil && enabled.passwordHash == "$scrypt$new")
            #expect(try await store.updateUser(id: UUID(), UserChange(role: .admin), now: now) == nil)

            // Two logins of dave, one of them already signed out: revoking returns the other one only.
            let (first, second) = (UUID(), UUID())
            for (family, hash) in [(first, "a"), (second, "b")] {
                try await store.insertRefreshToken(RefreshTokenRecord(
                    id: UUID(), userId: dave.id, familyId: family, tokenHash: String(repeating: hash, count: 64), expiresAt: now.addingTimeInterval(60), createdAt: now
                ))
            }
            try await store.revokeRefreshFamily(first, now: now)
            let third = UUID()
            try await store.insertRefreshToken(RefreshTokenRecord(
                id: UUID(), userId: dave.id, familyId: third, tokenHash: String(repeating: "g", count: 64), expiresAt: now.addingTimeInterval(60), createdAt: now
            ))
            #expect(try await store.revokeLogins(userId: dave.id, except: third, now: now) == [second])
            #expect(try await store.isRefreshFamilyRevoked(second))
            #expect(try await !store.isRefreshFamilyRevoked(third))
            #expect(try await store.revokeLogins(userId: dave.id, except: nil, now: now) == [third])
            #expect(try await store.revokeLogins(userId: dave.id, except: nil, now: now) == [])

            // Deleting dave deletes his sessions and their messages; a session he had claimed waits again.
            let owner = try #require(try await store.user(username: "Carla"))
            let his = Make.session(userId: dave.id)
            let theirs = Make.session(userId: owner.id)
            try await store.createSession(his)
            try await store.createSession(theirs)
            try await store.appendMessage(Make.message(his.id, userId: dave.id), now: now).expectCreated()
            _ = try await store.requestHandoff(sessionId: theirs.id, now: now)
            _ = try await store.claimHandoff(sessionId: theirs.id, assignee: dave.id, now: now)
            let before = try await store.recordCounts()
            #expect(try await store.deleteUser(id: dave.id, now: now))
            #expect(try await store.user(id: dave.id) == nil)
            #expect(try await store.session(id: his.id) == nil)
            let after = try await store.recordCounts()
            #expect(after.users == before.users - 1 && after.sessions == before.sessions - 1 && after.messages == before.messages - 1)
            #expect(after.refreshTokens == before.refreshTokens - 3)
            let waiting = try #require(try await store.session(id: theirs.id))
            #expect(waiting.handoff == .waiting && waiting.assigneeId == nil)
            #expect(try await store.deleteUser(id: dave.id, now: now) == false)
        }
    }

    @Test("guests without activity since a time are deleted with their sessions; active ones and accounts stay", arguments: backends)
    func inactiveGuests(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let old = Timestamp.now().addingTimeInterval(-10 * 86_400)
            let cutoff = Timestamp.now().addingTimeInterval(-86_400)
            func guest(_ name: String) async throws -> User {
                var user = Make.user(name, role: .guest)
                user.createdAt = old
                try await store.createUser(user)
                return user
            }
            let idle = try await guest("guest-idle"), chatty = try await guest("guest-chatty"), refreshed = try await guest("guest-refreshed")
            var member = Make.user("member")
            member.createdAt = old
            try await store.createUser(member)
            let fresh = Make.user("guest-new", role: .guest)  // made after the cutoff
            try await store.createUser(fresh)
            for user in [idle, chatty, member] {
                let session = Make.session(userId: user.id, ttl: 30 * 86_400, now: old)
                try await store.createSession(session)
                try await store.appendMessage(Make.message(session.id, userId: user.id, now: old), now: old).expectCreated()
                if user.id == chatty.id {
                    try await store.appendMessage(Make.message(session.id, userId: user.id), now: Timestamp.now()).expectCreated()
                }
            }
            try await store.insertRefreshToken(RefreshTokenRecord(
                id: UUID(), userId: refreshed.id, familyId: UUID(), tokenHash: String(repeating: "c", count: 64),
                expiresAt: Timestamp.now().addingTimeInterval(60), createdAt: Timestamp.now()
            ))
            let before = try await store.recordCounts()
            #expect(try await store.deleteInactiveGuests(inactiveSince: cutoff, limit: 10) == 1)
            #expect(try await store.user(id: idle.id) == nil)
            for kept in [chatty, refreshed, member, fresh] { #expect(try await store.user(id: kept.id) != nil) }
            let after = try await store.recordCounts()
            #expect(after.sessions == before.sessions - 1 && after.messages == before.messages - 1)
            #expect(try await store.deleteInactiveGuests(inactiveSince: cutoff, limit: 10) == 0)
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

            // A session resolved while it waits for a person leaves the queue and cannot be claimed.
            _ = try #require(try await store.requestHandoff(sessionId: session.id, now: now))
            let resolved = try #require(try await store.resolveSession(id: session.id, now: now))
            #expect(try await store.handoffs(assignee: nil, limit: 10).isEmpty)
            #expect(try await store.claimHandoff(sessionId: session.id, assignee: staff.id, now: now) == .unavailable(resolved))
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

    @Test("concurrent appends report their commits in history order, each before its append returns", arguments: backends)
    func commitOrder(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let session = Make.session(userId: UUID())
            try await store.createSession(session)
            let reported = CommitLog()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<300 {
                    group.addTask {
                        let outcome = try await store.appendMessage(
                            Make.message(session.id, userId: nil, content: "o\(i)"), now: Timestamp.now(), owner: nil,
                            committed: { message in reported.ids.withLock { $0.append(message.id) } })
                        guard case .created(let message) = outcome else { throw StoreError(.failed, "not created") }
                        #expect(reported.ids.withLock { $0.contains(message.id) })
                    }
                }
                try await group.waitForAll()
            }
            // A retry of a stored message and a refused append report nothing.
            #expect(try await store.appendMessage(Make.message(UUID(), userId: nil), now: Timestamp.now(), owner: nil,
                                                  committed: { message in reported.ids.withLock { $0.append(message.id) } }) == .sessionNotFound)
            var history: [UUID] = []
            while true {
                let page = try await store.messages(MessageQuery(sessionId: session.id, after: history.last, limit: 200))
                history += page.messages.map(\.id)
                if !page.hasMore { break }
            }
            #expect(history.count == 300)
            #expect(reported.ids.withLock { $0 } == history)
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

    @Test("concurrent appends to open, resolved, expired, missing and others' sessions each get their own outcome", arguments: backends)
    func mixedOutcomes(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let (user, open) = try await store.newUserWithSession()
            let now = Timestamp.now()
            let resolved = Make.session(userId: user.id), expired = Make.session(userId: user.id, ttl: -1, now: now)
            try await store.createSession(resolved)
            try await store.createSession(expired)
            #expect(try await store.resolveSession(id: resolved.id, now: now) != nil)
            let cases: [(UUID, UUID?, AppendOutcome?)] = [
                (open.id, user.id, nil), (resolved.id, user.id, .sessionResolved), (expired.id, nil, .sessionExpired),
                (UUID(), nil, .sessionNotFound), (open.id, UUID(), .sessionNotFound), (open.id, nil, nil),
            ]
            let outcomes = try await withThrowingTaskGroup(of: (Int, AppendOutcome).self) { group in
                for round in 0..<10 {
                    for (k, (session, owner, _)) in cases.enumerated() {
                        group.addTask { (k, try await store.appendMessage(Make.message(session, userId: user.id, content: "r\(round)"), now: now, owner: owner)) }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            for (k, outcome) in outcomes {
                if let expected = cases[k].2 {
                    #expect(outcome == expected, "case \(k)")
                } else if case .created = outcome {} else {
                    Issue.record("case \(k): \(outcome)")
                }
            }
            #expect(try await store.messages(MessageQuery(sessionId: open.id, limit: 100)).messages.count == 20)
            #expect(try await store.messages(MessageQuery(sessionId: resolved.id, limit: 100)).messages.isEmpty)
            #expect(try await store.messages(MessageQuery(sessionId: expired.id, limit: 100)).messages.isEmpty)
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

    @Test("read state: unread counts others' messages after the marker, which never moves back", arguments: backends)
    func readState(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let (owner, staff) = (Make.user(), Make.user(role: .agent))
            try await store.createUser(owner)
            try await store.createUser(staff)
            let session = Make.session(userId: owner.id)
            let other = Make.session(userId: owner.id)
            try await store.createSession(session)
            try await store.createSession(other)
            func append(_ user: UUID?, in id: UUID = session.id) async throws -> ChatMessage {
                guard case .created(let m) = try await store.appendMessage(Make.message(id, userId: user), now: Timestamp.now()) else {
                    throw StoreError(.failed, "append failed")
                }
                return m
            }
            let first = try await append(owner.id)
            let reply = try await append(staff.id)
            let bot = try await append(nil)
            _ = try await append(owner.id, in: other.id)
            // Nothing read yet: the owner has two unread (staff and agent), the staff member two (owner and agent).
            #expect(try await store.unreadCounts(sessionIds: [session.id, other.id], reader: owner.id) == [session.id: 2])
            #expect(try await store.unreadCounts(sessionIds: [session.id, other.id], reader: staff.id) == [session.id: 2, other.id: 1])
            #expect(try await store.unreadCounts(sessionIds: [], reader: owner.id) == [:])

            guard case .read(let read) = try await store.markRead(sessionId: session.id, userId: owner.id, messageId: reply.id, now: Timestamp.now()) else {
                Issue.record("markRead failed")
                return
            }
            #expect(read.lastReadId == reply.id && read.userId == owner.id)
            #expect(try await store.unreadCounts(sessionIds: [session.id], reader: owner.id) == [session.id: 1])
            // An older message leaves the marker where it is.
            if case .read(let kept) = try await store.markRead(sessionId: session.id, userId: owner.id, messageId: first.id, now: Timestamp.now()) {
                #expect(kept.lastReadId == reply.id)
            } else {
                Issue.record("markRead of an older message failed")
            }
            _ = try await store.markRead(sessionId: session.id, userId: owner.id, messageId: bot.id, now: Timestamp.now())
            #expect(try await store.unreadCounts(sessionIds: [session.id], reader: owner.id) == [:])
            // Another reader's marker is their own.
            #expect(try await store.unreadCounts(sessionIds: [session.id], reader: staff.id) == [session.id: 2])
            // A message of another session, or none at all, is refused.
            let foreign = try await append(owner.id, in: other.id)
            #expect(try await store.markRead(sessionId: session.id, userId: owner.id, messageId: foreign.id, now: Timestamp.now()) == .messageNotFound)
            #expect(try await store.markRead(sessionId: session.id, userId: owner.id, messageId: UUID(), now: Timestamp.now()) == .messageNotFound)
            // Deleting the session deletes its markers.
            #expect(try await store.recordCounts().sessionReads == 1)
            #expect(try await store.deleteSession(id: session.id))
            #expect(try await store.recordCounts().sessionReads == 0)
        }
    }

    @Test("activity: messages and sessions per UTC day, resolved share, time to the first reply", arguments: backends)
    func activity(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let user = Make.user()
            try await store.createUser(user)
            let day0 = Timestamp.days(Timestamp.now()) - 3
            let since = Date(timeIntervalSince1970: Double(day0) * 86_400)
            func at(_ days: Double, _ seconds: Double = 0) -> Date { since.addingTimeInterval(days * 86_400 + seconds) }
            func session(_ created: Date) async throws -> UUID {
                let s = Make.session(userId: user.id, ttl: 30 * 86_400, now: created)
                try await store.createSession(s)
                return s.id
            }
            func say(_ id: UUID, _ time: Date, _ direction: MessageDirection, type: String = "text") async throws {
                var m = Make.message(id, userId: direction == .inbound ? user.id : nil, now: time)
                m.direction = direction
                m.type = type
                try await store.appendMessage(m, now: time).expectCreated()
            }
            let a = try await session(at(0, 3600))
            try await say(a, at(0, 3600), .inbound)
            try await say(a, at(0, 3601), .outbound, type: "system")  // a note is not a reply
            try await say(a, at(0, 3630), .outbound)
            let b = try await session(at(1, 3600))
            try await say(b, at(1, 3600), .inbound)
            try await say(b, at(1, 3690), .outbound, type: "agent")
            _ = try await store.resolveSession(id: b, now: at(1, 4000))
            let old = try await session(at(-1))  // opened before the period: its later message still counts that day
            try await say(old, at(2, 60), .inbound)
            _ = try await session(at(2, 120))  // no messages: no first reply

            let report = try await store.activity(since: since)
            let day = { (n: Int64) in Timestamp.dayString(day0 + n) }
            #expect(report.sessionsPerDay == [day(0): 1, day(1): 1, day(2): 1])
            #expect(report.messagesPerDay == [day(0): 3, day(1): 2, day(2): 1])
            #expect(report.sessionsOpened == 3 && report.sessionsResolved == 1)
            #expect(report.firstReplySeconds == [day(0): [30], day(1): [90]])
            #expect(try await store.activity(since: at(2)).sessionsOpened == 1)
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
            // One edited and one deleted message: their edited_at and deleted_at are copied too.
            for (i, stored) in try await source.messages(MessageQuery(sessionId: session.id, limit: 2)).messages.enumerated() {
                if i == 0 { _ = try await source.editMessage(sessionId: session.id, id: stored.id, content: "edited", now: now) }
                else { _ = try await source.deleteMessage(sessionId: session.id, id: stored.id, now: now) }
            }
            // Only one of two waiting sessions when the limit says one.
            try await source.createSession(Make.session(userId: user.id))
            #expect(try await source.handoffs(assignee: nil, limit: 1).count == 1)

            // Read markers of two sessions by two readers, exported a session at a time.
            let messages = try await source.exportMessages(after: nil, limit: 100)
            let second = Make.session(userId: user.id)
            try await source.createSession(second)
            try await source.appendMessage(Make.message(second.id, userId: nil), now: now).expectCreated()
            let secondMessage = try await source.messages(MessageQuery(sessionId: second.id, limit: 1)).messages[0]
            let reader = Make.user()
            try await source.createUser(reader)
            for (s, m) in [(session.id, messages[0].id), (second.id, secondMessage.id)] {
                for u in [user.id, reader.id] { _ = try await source.markRead(sessionId: s, userId: u, messageId: m, now: now) }
            }
            let firstPage = try await source.exportSessionReads(after: nil, limit: 1)
            #expect(firstPage.count == 2 && Set(firstPage.map(\.sessionId)).count == 1)
            let secondPage = try await source.exportSessionReads(after: firstPage[0].sessionId, limit: 1)
            #expect(secondPage.count == 2 && secondPage[0].sessionId != firstPage[0].sessionId)
            #expect(try await source.exportSessionReads(after: secondPage[0].sessionId, limit: 1).isEmpty)

            let batch = RecordBatch(
                users: try await source.exportUsers(after: nil, limit: 100), sessions: try await source.exportSessions(after: nil, limit: 100),
                messages: try await source.exportMessages(after: nil, limit: 100), refreshTokens: try await source.exportRefreshTokens(after: nil, limit: 100),
                revokedAccessTokens: try await source.exportRevokedAccessTokens(), sessionReads: firstPage + secondPage
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
                #expect(try await target.exportSessionReads(after: nil, limit: 100) == batch.sessionReads.sorted {
                    ($0.sessionId.lowercased, $0.userId.lowercased) < ($1.sessionId.lowercased, $1.userId.lowercased)
                })
                #expect(try await target.session(id: session.id) == (try await source.session(id: session.id)))
            }
        }
    }

    @Test("edit and delete: current text, tombstones, and the changes a reconnecting client missed", arguments: backends)
    func editAndDelete(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let session = Make.session(userId: UUID())
            try await store.createSession(session)
            var stored: [ChatMessage] = []
            for i in 0..<4 {
                var m = Make.message(session.id, userId: session.userId, content: "m\(i)")
                m.metadata = .object(["k": .int(Int64(i))])
                guard case .created(let created) = try await store.appendMessage(m, now: Timestamp.now()) else { throw StoreError(.failed, "not created") }
                stored.append(created)
            }
            let later = Timestamp.now().addingTimeInterval(5)
            let edited = try #require(try await store.editMessage(sessionId: session.id, id: stored[0].id, content: "m0 edited", now: later))
            #expect(edited.content == "m0 edited" && edited.editedAt == later && edited.updatedAt == later && edited.deletedAt == nil)
            #expect(edited.metadata == stored[0].metadata && edited.createdAt == stored[0].createdAt)
            let tombstone = try #require(try await store.deleteMessage(sessionId: session.id, id: stored[1].id, now: later))
            #expect(tombstone.content == "" && tombstone.metadata == .emptyObject && tombstone.deletedAt == later && tombstone.id == stored[1].id)
            // Deleting again changes nothing; a tombstone cannot be edited; another session's id is no message.
            #expect(try await store.deleteMessage(sessionId: session.id, id: stored[1].id, now: later.addingTimeInterval(9)) == tombstone)
            #expect(try await store.editMessage(sessionId: session.id, id: stored[1].id, content: "back", now: later) == nil)
            #expect(try await store.editMessage(sessionId: UUID(), id: stored[2].id, content: "x", now: later) == nil)
            #expect(try await store.deleteMessage(sessionId: UUID(), id: stored[2].id, now: later) == nil)
            #expect(try await store.message(sessionId: session.id, id: stored[1].id) == tombstone)
            let history = try await store.messages(MessageQuery(sessionId: session.id, limit: 10)).messages
            #expect(history.map(\.id) == stored.map(\.id) && history[0] == edited && history[1] == tombstone)

            // Changed after a time, up to a message: the edit and the delete, not later messages.
            _ = try await store.editMessage(sessionId: session.id, id: stored[3].id, content: "m3 edited", now: later)
            let changed = try await store.changedMessages(sessionId: session.id, upTo: stored[2].id, since: later.addingTimeInterval(-1), limit: 10)
            #expect(changed == [edited, tombstone])
            #expect(try await store.changedMessages(sessionId: session.id, upTo: stored[2].id, since: later, limit: 10).isEmpty)
            #expect(try await store.changedMessages(sessionId: session.id, upTo: stored[3].id, since: stored[0].createdAt, limit: 1) == [edited])

            // Two changes in one millisecond, or from a clock behind: each later version has a later updatedAt.
            guard case .created(let last) = try await store.appendMessage(Make.message(session.id, userId: session.userId), now: Timestamp.now())
            else { throw StoreError(.failed, "not created") }
            let first = try #require(try await store.editMessage(sessionId: session.id, id: last.id, content: "a", now: later))
            let second = try #require(try await store.editMessage(sessionId: session.id, id: last.id, content: "b", now: later))
            let behind = try #require(try await store.editMessage(sessionId: session.id, id: last.id, content: "c", now: later.addingTimeInterval(-3)))
            let gone = try #require(try await store.deleteMessage(sessionId: session.id, id: last.id, now: later.addingTimeInterval(-3)))
            #expect(first.updatedAt < second.updatedAt && second.updatedAt < behind.updatedAt && behind.updatedAt < gone.updatedAt)
            #expect(Timestamp.format(second.updatedAt) != Timestamp.format(first.updatedAt))
        }
    }

    @Test("search: words, phrases, prefixes and exclusions, ranked, paged, only what the reader may see", arguments: backends)
    func search(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let ann = Make.user(), bob = Make.user(role: .agent)
            try await store.createUser(ann)
            try await store.createUser(bob)
            let mine = Make.session(userId: ann.id), his = Make.session(userId: bob.id), handed = Make.session(userId: ann.id)
            for s in [mine, his, handed] { try await store.createSession(s) }
            func say(_ session: ChatSession, _ text: String) async throws -> ChatMessage {
                guard case .created(let m) = try await store.appendMessage(Make.message(session.id, userId: session.userId, content: text), now: Timestamp.now())
                else { throw StoreError(.failed, "not created") }
                return m
            }
            let fox = try await say(mine, "The quick brown fox")
            let thinking = try await say(mine, "Quick thinking helps, quick QUICK")
            let bear = try await say(mine, "A slow brown bear")
            let quickly = try await say(mine, "Quickly now")
            let gone = try await say(mine, "quick and gone")
            let hisFox = try await say(his, "quick fox of Bob's")
            let waiting = try await say(handed, "quick, a person please")
            _ = try await store.deleteMessage(sessionId: mine.id, id: gone.id, now: Timestamp.now())
            func ids(_ q: String, reader: UUID? = ann.id, session: UUID? = nil) async throws -> [UUID] {
                try await store.searchMessages(MessageSearch(terms: try SearchTerms.parse(q), reader: reader, sessionId: session, limit: 50)).hits.map(\.message.id)
            }
            // Ranked: the message saying it three times first. Deleted messages, other people's sessions: never.
            let quick = try await ids("quick")
            #expect(quick.first == thinking.id)
            #expect(Set(try await ids("quick")) == [thinking.id, fox.id, waiting.id])
            #expect(Set(try await ids("QUICK*")) == [thinking.id, fox.id, waiting.id, quickly.id])
            #expect(try await ids("\"brown fox\"") == [fox.id])
            #expect(try await ids("brown -fox") == [bear.id])
            #expect(try await ids("brown -\"quick brown\"") == [bear.id])
            #expect(try await ids("gone").isEmpty)
            #expect(Set(try await ids("fox", reader: nil)) == [fox.id, hisFox.id])
            #expect(try await ids("quick", reader: nil, session: his.id) == [hisFox.id])
            // A claimed session is searchable by the person it is assigned to.
            #expect(try await ids("person", reader: bob.id).isEmpty)
            _ = try await store.requestHandoff(sessionId: handed.id, now: Timestamp.now())
            _ = try await store.claimHandoff(sessionId: handed.id, assignee: bob.id, now: Timestamp.now())
            #expect(try await ids("person", reader: bob.id) == [waiting.id])
            // Words that mean something to FTS5 or tsquery are plain words here.
            #expect(try await ids("NOT AND OR NEAR( fox:A !x & | ^y").isEmpty)
            // An edit is searched by its new text.
            _ = try await store.editMessage(sessionId: mine.id, id: bear.id, content: "A slow grizzly", now: Timestamp.now())
            #expect(try await ids("grizzly") == [bear.id])
            #expect(try await ids("bear").isEmpty)

            // The snippet marks each match; pages of one follow each other without repeats.
            let hit = try #require(try await store.searchMessages(MessageSearch(terms: try SearchTerms.parse("fox"), reader: ann.id)).hits.first)
            #expect(hit.snippet.contains("\(SearchHit.matchStart)fox\(SearchHit.matchEnd)"))
            var seen: [UUID] = []
            var after: SearchCursor?
            while true {
                let page = try await store.searchMessages(MessageSearch(terms: try SearchTerms.parse("quick*"), reader: ann.id, after: after, limit: 1))
                seen += page.hits.map(\.message.id)
                guard page.hasMore else { break }
                after = page.hits.last?.cursor
            }
            #expect(seen == (try await ids("quick*")))
        }
    }

    @Test("retention: the oldest messages and long-resolved sessions go in batches; authored messages are found", arguments: backends)
    func retention(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let user = Make.user(), staff = Make.user(role: .agent)
            try await store.createUser(user)
            try await store.createUser(staff)
            let now = Timestamp.now()
            let open = Make.session(userId: user.id, ttl: 400 * 86_400, now: now.addingTimeInterval(-300 * 86_400))
            // Old rows as `copy` brings them: ids made at their time (a running store makes ids in commit order, now).
            var oldMessages: [ChatMessage] = []
            for i in 0..<5 {
                let at = now.addingTimeInterval(-200 * 86_400 + Double(i))
                var m = Make.message(open.id, userId: user.id, now: at)
                m.id = UUIDv7.cursor(at: at)
                oldMessages.append(m)
            }
            var resolved: [ChatSession] = []
            var inResolved: [ChatMessage] = []
            for daysAgo in [90.0, 60, 1] {
                var s = Make.session(userId: user.id, now: now.addingTimeInterval(-100 * 86_400))
                s.isResolved = true
                s.state = .resolved
                s.resolvedAt = now.addingTimeInterval(-daysAgo * 86_400)
                resolved.append(s)
                let at = s.resolvedAt!.addingTimeInterval(-3600)
                var m = Make.message(s.id, userId: user.id, now: at)
                m.id = UUIDv7.cursor(at: at)
                inResolved.append(m)
            }
            try await store.importRecords(RecordBatch(sessions: [open] + resolved, messages: oldMessages + inResolved))
            let old = oldMessages.map(\.id)
            guard case .created(let fresh) = try await store.appendMessage(Make.message(open.id, userId: staff.id), now: now) else { return }
            let cutoff = now.addingTimeInterval(-100 * 86_400)
            #expect(try await store.deleteMessages(before: cutoff, limit: 2) == 2)
            #expect(try await store.messages(MessageQuery(sessionId: open.id, limit: 10)).messages.map(\.id) == Array(old[2...]) + [fresh.id])
            #expect(try await store.deleteMessages(before: cutoff, limit: 10) == 3)
            #expect(try await store.deleteMessages(before: cutoff, limit: 10) == 0)
            #expect(try await store.messages(MessageQuery(sessionId: open.id, limit: 10)).messages.map(\.id) == [fresh.id])

            #expect(try await store.deleteResolvedSessions(before: now.addingTimeInterval(-30 * 86_400), limit: 1) == 1)
            #expect(try await store.session(id: resolved[0].id) == nil)
            #expect(try await store.deleteResolvedSessions(before: now.addingTimeInterval(-30 * 86_400), limit: 10) == 1)
            #expect(try await store.session(id: resolved[1].id) == nil)
            #expect(try await store.session(id: resolved[2].id) != nil)
            #expect(try await store.session(id: open.id) != nil)
            #expect(try await store.statistics().totalMessages == 2)
            try await store.reclaimSpace()

            #expect(try await store.messages(authoredBy: staff.id, inOthersSessions: true, after: nil, limit: 10).map(\.id) == [fresh.id])
            #expect(try await store.messages(authoredBy: user.id, inOthersSessions: true, after: nil, limit: 10).isEmpty)
            #expect(try await store.messages(authoredBy: user.id, inOthersSessions: false, after: nil, limit: 10).count == 1)
        }
    }

    @Test("attachments: chunks in order, complete only when done, quota, messages refer to them, deleted with them, copied", arguments: backends)
    func attachments(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let (user, session) = try await store.newUserWithSession()
            let now = Timestamp.now()
            func upload(_ bytes: [UInt8], quota: Int64? = nil) async throws -> (UUID, AttachmentCompletion) {
                try await store.upload(bytes, session: session.id, user: user.id, at: now, quota: quota)
            }
            // Every byte value, over more than one chunk.
            let bytes = (0..<(Attachment.chunkSize + 1000)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let (id, outcome) = try await upload(bytes)
            guard case .completed(let file) = outcome else { Issue.record("\(outcome)"); return }
            #expect(file.size == Int64(bytes.count) && file.completedAt != nil)
            #expect(try await store.attachment(id: id) == file)
            #expect(try await store.attachmentChunk(id: id, seq: 0) == Array(bytes[..<Attachment.chunkSize]))
            #expect(try await store.attachmentChunk(id: id, seq: 1) == Array(bytes[Attachment.chunkSize...]))
            #expect(try await store.attachmentChunk(id: id, seq: 2) == nil)
            #expect(try await store.attachmentBytes(userId: user.id) == Int64(bytes.count))
            #expect(try await store.attachments(ids: [id, UUID()], sessionId: session.id) == [file])
            #expect(try await store.attachments(ids: [id], sessionId: UUID()).isEmpty)
            #expect(try await store.attachments(uploadedBy: user.id, after: nil, limit: 10) == [file])

            // An upload not yet complete is nobody's attachment, and the sweep removes it once abandoned.
            let pending = UUIDv7.make(now: now)
            try await store.createAttachment(Attachment(id: pending, sessionId: session.id, userId: user.id, filename: "p", contentType: "text/plain", createdAt: now.addingTimeInterval(-7200)))
            try await store.putAttachmentChunk(AttachmentChunk(attachmentId: pending, seq: 0, data: [1, 2, 3]))
            #expect(try await store.attachment(id: pending) == nil)
            #expect(try await store.attachments(ids: [pending], sessionId: session.id).isEmpty)
            #expect(try await store.deleteAbandonedUploads(startedBefore: now.addingTimeInterval(-3600), limit: 10) == 1)
            #expect(try await store.deleteAbandonedUploads(startedBefore: now.addingTimeInterval(-3600), limit: 10) == 0)

            // Over the quota: refused and removed; under it: complete.
            let (tooMuch, refused) = try await upload([9, 9, 9], quota: Int64(bytes.count) + 2)
            #expect(refused == .overQuota(usedBytes: Int64(bytes.count)))
            #expect(try await store.attachment(id: tooMuch) == nil)
            let (small, fits) = try await upload([9, 9], quota: Int64(bytes.count) + 2)
            guard case .completed(let smallFile) = fits else { Issue.record("\(fits)"); return }

            // A message keeps its files' refs; deleting it deletes them.
            var message = Make.message(session.id, userId: user.id, clientId: "with-files")
            message.attachments = [file.ref, smallFile.ref]
            guard case .created(let stored) = try await store.appendMessage(message, now: now) else { Issue.record("not created"); return }
            #expect(stored.attachments == [file.ref, smallFile.ref])
            #expect(try await store.message(sessionId: session.id, id: stored.id)?.attachments == [file.ref, smallFile.ref])
            // Each file is sent once: another message carrying it is refused and stores nothing, while a retry
            // of the first send (its client id) is still its duplicate.
            var again = Make.message(session.id, userId: user.id)
            again.attachments = [smallFile.ref]
            #expect(try await store.appendMessage(again, now: now) == .attachmentSent)
            #expect(try await store.messages(MessageQuery(sessionId: session.id)).messages.map(\.id) == [stored.id])
            #expect(try await store.appendMessage(message, now: now) == .duplicate(stored))
            let exported = try await store.exportAttachments(after: nil, limit: 10)
            #expect(exported.map(\.id) == [id, small])
            #expect(try await store.recordCounts().attachments == 2)
            let tombstone = try await store.deleteMessage(sessionId: session.id, id: stored.id, now: now)
            #expect(tombstone?.attachments == [])
            #expect(try await store.attachment(id: id) == nil)
            #expect(try await store.attachmentChunk(id: id, seq: 0) == nil)

            // Imported as `copy` brings them, then gone with their session.
            try await store.importRecords(RecordBatch(attachments: [file], attachmentChunks: [AttachmentChunk(attachmentId: id, seq: 0, data: bytes)]))
            #expect(try await store.attachment(id: id) == file)
            #expect(try await store.attachmentChunk(id: id, seq: 0) == bytes)
            #expect(try await store.deleteSession(id: session.id))
            #expect(try await store.attachment(id: id) == nil)
            #expect(try await store.attachment(id: small) == nil)
            #expect(try await store.recordCounts().attachments == 0)
        }
    }

    @Test("uploads: a message marks the files it carries sent; complete uploads never sent are swept after their time, sent ones never", arguments: backends)
    func unsentUploads(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let (user, session) = try await store.newUserWithSession()
            let now = Timestamp.now()
            func upload(_ name: String, completed: Date) async throws -> Storage.Attachment {
                guard case (_, .completed(let file)) = try await store.upload(Array(name.utf8), session: session.id, user: user.id, at: completed)
                else { throw StoreError(.failed, "upload \(name) not completed") }
                return file
            }
            let dayAgo = now.addingTimeInterval(-90_000)
            let sent = try await upload("sent", completed: dayAgo)
            let twice = try await upload("twice", completed: dayAgo)
            let forgotten = try await upload("forgotten", completed: dayAgo)
            let recent = try await upload("recent", completed: now)
            #expect(sent.sentAt == nil)

            var message = Make.message(session.id, userId: user.id)
            message.attachments = [sent.ref, twice.ref]
            guard case .created = try await store.appendMessage(message, now: now) else { Issue.record("not created"); return }
            // A file is carried by one message: sending it again is refused and it keeps when it was sent.
            var again = Make.message(session.id, userId: user.id)
            again.attachments = [twice.ref]
            #expect(try await store.appendMessage(again, now: now.addingTimeInterval(5)) == .attachmentSent)
            // A message refused (resolved session) marks nothing.
            let closed = Make.session(userId: user.id)
            try await store.createSession(closed)
            let elsewhere = try await upload("elsewhere", completed: dayAgo)
            #expect(try await store.resolveSession(id: closed.id, now: now) != nil)
            var refused = Make.message(closed.id, userId: user.id)
            refused.attachments = [elsewhere.ref]
            #expect(try await store.appendMessage(refused, now: now) == .sessionResolved)

            #expect(try await store.attachment(id: sent.id)?.sentAt == now)
            #expect(try await store.attachment(id: twice.id)?.sentAt == now)
            #expect(try await store.attachment(id: forgotten.id)?.sentAt == nil)
            #expect(try await store.exportAttachments(after: nil, limit: 10).first { $0.id == sent.id }?.sentAt == now)

            // The sweep takes what completed before its cutoff and no message carried, a batch at a time.
            let cutoff = now.addingTimeInterval(-86_400)
            #expect(try await store.deleteUnsentUploads(completedBefore: cutoff, limit: 1) == 1)
            #expect(try await store.deleteUnsentUploads(completedBefore: cutoff, limit: 10) == 1)
            #expect(try await store.deleteUnsentUploads(completedBefore: cutoff, limit: 10) == 0)
            #expect(try await store.attachment(id: forgotten.id) == nil)
            #expect(try await store.attachment(id: elsewhere.id) == nil)
            #expect(try await store.attachmentChunk(id: forgotten.id, seq: 0) == nil)
            #expect(try await store.attachment(id: sent.id) != nil)
            #expect(try await store.attachment(id: twice.id) != nil)
            #expect(try await store.attachment(id: recent.id) != nil)
            #expect(try await store.attachmentBytes(userId: user.id) == Int64("sent".utf8.count + "twice".utf8.count + "recent".utf8.count))
        }
    }

    @Test("event outbox: recorded by the database with each change, fanned out, claimed in session order, retried, parked, redelivered", arguments: backends)
    func webhookOutbox(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { store, _ in
            let user = Make.user()
            try await store.createUser(user)
            // Nothing is recorded without subscriptions.
            let before = Make.session(userId: user.id)
            try await store.createSession(before)
            #expect(try await store.fanOutWebhookEvents(webhook: "crm", events: ["session.created"], limit: 10, now: Timestamp.now()) == 0)
            try await store.setWebhookSubscriptions(["session.created", "message.created", "message.updated", "session.resolved"], webhooks: ["crm"])
            let a = Make.session(userId: user.id), b = Make.session(userId: user.id)
            try await store.createSession(a)
            try await store.createSession(b)
            guard case .created(let m1) = try await store.appendMessage(Make.message(a.id, userId: user.id, content: "one"), now: Timestamp.now()),
                  case .created(let m2) = try await store.appendMessage(Make.message(a.id, userId: user.id, content: "two"), now: Timestamp.now())
            else { Issue.record("not created"); return }
            _ = try await store.editMessage(sessionId: a.id, id: m1.id, content: "one!", now: Timestamp.now())
            _ = try await store.deleteMessage(sessionId: a.id, id: m2.id, now: Timestamp.now())  // message.deleted: not subscribed
            _ = try await store.resolveSession(id: b.id, now: Timestamp.now())
            let now = Timestamp.now()
            // `crm` was first seen before these events; `audit` only wants resolutions.
            #expect(try await fannedOut(store, webhook: "crm", events: ["session.created", "message.created", "message.updated", "session.resolved"], limit: 100, now: now, expecting: 6) == 6)
            #expect(try await store.fanOutWebhookEvents(webhook: "crm", events: ["session.created"], limit: 100, now: now) == 0)

            // One per session at a time, oldest first.
            var claimed = try await store.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: now)
            #expect(claimed.map(\.type) == ["session.created", "session.created"])
            #expect(Set(claimed.map(\.sessionId)) == [a.id, b.id])
            #expect(try await store.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: now).isEmpty)  // leased
            let first = try #require(claimed.first { $0.sessionId == a.id })
            // The session as it was when created.
            guard case .session(let session) = first.subject else { Issue.record("\(first.subject)"); return }
            #expect(session == (try await store.session(id: a.id)))
            // A failure holds the session's later events back until it is delivered.
            try await store.finishWebhookDelivery(webhook: "crm", seq: first.seq, error: "HTTP 503", retryAt: now.addingTimeInterval(30), now: now)
            let other = try #require(claimed.first { $0.sessionId == b.id })
            try await store.finishWebhookDelivery(webhook: "crm", seq: other.seq, error: nil, retryAt: nil, now: now)
            claimed = try await store.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: now)
            #expect(claimed.map(\.type) == ["session.resolved"])
            for d in claimed { try await store.finishWebhookDelivery(webhook: "crm", seq: d.seq, error: nil, retryAt: nil, now: now) }
            claimed = try await store.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: now.addingTimeInterval(31))
            #expect(claimed.map(\.eventId) == [first.eventId] && claimed.first?.attempts == 1)
            // Given up: parked, listed, then sent again and the rest of the session follows in order.
            try await store.finishWebhookDelivery(webhook: "crm", seq: first.seq, error: "HTTP 503", retryAt: nil, now: now)
            #expect(try await store.webhookDeliveries(status: .parked, limit: 10).map(\.eventId) == [first.eventId])
            var order: [String] = []
            while true {
                let next = try await store.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: now.addingTimeInterval(40))
                guard !next.isEmpty else { break }
                for d in next {
                    order.append(d.type)
                    try await store.finishWebhookDelivery(webhook: "crm", seq: d.seq, error: nil, retryAt: nil, now: now)
                }
            }
            #expect(order == ["message.created", "message.created", "message.updated"])
            // Each message event holds the message as it was then.
            let texts = try await store.webhookDeliveries(status: .delivered, limit: 10).compactMap { d -> String? in
                if case .message(let m) = d.subject { return "\(d.type) \(m.id == m1.id ? "m1" : "m2") \(m.content)" }
                return nil
            }
            #expect(texts == ["message.updated m1 one!", "message.created m2 two", "message.created m1 one"])
            #expect(try await store.redeliverWebhook(webhook: "crm", eventId: first.eventId, now: now))
            #expect(try await !store.redeliverWebhook(webhook: "crm", eventId: first.eventId, now: now))
            claimed = try await store.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: now.addingTimeInterval(41))
            #expect(claimed.map(\.eventId) == [first.eventId] && claimed.first?.attempts == 0)
            try await store.finishWebhookDelivery(webhook: "crm", seq: first.seq, error: nil, retryAt: nil, now: now)
            #expect(try await store.webhookDeliveries(status: .delivered, limit: 10).count == 6)
            #expect(try await store.pruneWebhookEvents(before: now.addingTimeInterval(60), limit: 100) >= 6)
            #expect(try await store.webhookDeliveries(status: .delivered, limit: 10).isEmpty)
            // A webhook removed from the configuration: its queue goes, and nothing more is recorded for it.
            _ = try await store.fanOutWebhookEvents(webhook: "audit", events: ["session.created"], limit: 10, now: now)
            try await store.createSession(Make.session(userId: user.id))
            #expect(try await fannedOut(store, webhook: "audit", events: ["session.created"], limit: 10, now: now, expecting: 1) == 1)
            try await store.setWebhookSubscriptions([], webhooks: [])
            #expect(try await store.claimWebhookDeliveries(webhooks: ["audit"], limit: 10, lease: 60, now: now).isEmpty)
            try await store.createSession(Make.session(userId: user.id))
            #expect(try await store.fanOutWebhookEvents(webhook: "crm", events: ["session.created"], limit: 10, now: now) == 0)
        }
    }

    @Test("copy carries the webhook outbox: events, each delivery's state, the cursors; imported rows are no new events", arguments: backends)
    func webhookOutboxCopy(_ make: @Sendable () -> StoreFixture) async throws {
        try await withStore(make) { source, _ in
            let user = Make.user()
            try await source.createUser(user)
            let events: Set<String> = ["session.created", "message.created"]
            try await source.setWebhookSubscriptions(events, webhooks: ["crm"])
            // The webhook's first start: it receives the events recorded from now on.
            #expect(try await source.fanOutWebhookEvents(webhook: "crm", events: events, limit: 100, now: Timestamp.now()) == 0)
            let session = Make.session(userId: user.id)
            try await source.createSession(session)
            for text in ["one", "two", "three"] {
                try await source.appendMessage(Make.message(session.id, userId: user.id, content: text), now: Timestamp.now()).expectCreated()
            }
            let now = Timestamp.now()
            #expect(try await fannedOut(source, webhook: "crm", events: events, limit: 100, now: now, expecting: 4) == 4)
            // The session event delivered, "one" failed (retry due later), "two" and "three" waiting behind it.
            let first = try #require(try await source.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: now).first)
            try await source.finishWebhookDelivery(webhook: "crm", seq: first.seq, error: nil, retryAt: nil, now: now)
            let one = try await source.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: now)
            try #require(one.map(\.type) == ["message.created"])
            try await source.finishWebhookDelivery(webhook: "crm", seq: one[0].seq, error: "HTTP 503", retryAt: now.addingTimeInterval(30), now: now)
            // Recorded, not yet taken by the webhook's cursor: the target's server fans it out.
            let late = Make.session(userId: user.id)
            try await source.createSession(late)

            let exported = try await source.exportWebhookEvents(after: nil, limit: 100)
            try #require(exported.map(\.type) == ["session.created", "message.created", "message.created", "message.created", "session.created"])
            #expect(try await source.exportWebhookEvents(after: exported[1].seq, limit: 2).map(\.id) == exported[2...3].map(\.id))
            #expect(exported[0].deliveries.map(\.status) == [.delivered] && exported[1].deliveries.first?.lastError == "HTTP 503")
            #expect(exported[4].deliveries.isEmpty)
            let cursors = try await source.exportWebhookCursors()
            #expect(cursors == [WebhookCursor(webhook: "crm", lastEventId: exported[3].id)])

            try await withStore(make) { target, _ in
                // The target records events for these types too: importing rows must not make new ones.
                try await target.setWebhookSubscriptions(events, webhooks: ["crm"])
                // A server started on the empty target first: its cursor (at 0) moves to the copied one.
                #expect(try await target.fanOutWebhookEvents(webhook: "crm", events: events, limit: 100, now: now) == 0)
                let batch = RecordBatch(
                    users: try await source.exportUsers(after: nil, limit: 100), sessions: try await source.exportSessions(after: nil, limit: 100),
                    messages: try await source.exportMessages(after: nil, limit: 100)
                )
                try await target.importRecords(batch)
                try await target.importRecords(RecordBatch(webhookEvents: Array(exported[..<2])))
                try await target.importRecords(RecordBatch(webhookEvents: exported))  // events already there are skipped
                try await target.importRecords(RecordBatch(webhookCursors: cursors))
                #expect(try await target.recordCounts() == (try await source.recordCounts()))
                let copied = try await target.exportWebhookEvents(after: nil, limit: 100)
                #expect(copied.map(\.id) == exported.map(\.id))
                #expect(copied.map(\.deliveries) == exported.map(\.deliveries))
                #expect(try await target.exportWebhookCursors() == cursors)
                // The target's server goes on where the source stopped: the late session is fanned out,
                // "one" is retried when due, then "two" and "three" in order; nothing is sent twice.
                #expect(try await fannedOut(target, webhook: "crm", events: events, limit: 100, now: now, expecting: 1) == 1)
                var order: [String] = []
                let due = now.addingTimeInterval(31)
                while true {
                    let next = try await target.claimWebhookDeliveries(webhooks: ["crm"], limit: 10, lease: 60, now: due)
                    guard !next.isEmpty else { break }
                    for d in next {
                        switch d.subject {
                        case .message(let m): order.append(m.content)
                        case .session(let s): order.append(s.id == late.id ? "late" : "session")
                        }
                        try await target.finishWebhookDelivery(webhook: "crm", seq: d.seq, error: nil, retryAt: nil, now: due)
                    }
                }
                #expect(order.filter { $0 != "late" } == ["one", "two", "three"] && order.contains("late"))
                #expect(order.count == 4)
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

/// The ids an append's `committed` callback reported, in the order it reported them.
final class CommitLog: Sendable {
    let ids = Mutex<[UUID]>([])
}

@Suite("Search query syntax")
struct SearchSyntaxTests {
    @Test("words, phrases, prefixes and exclusions parse; what cannot be searched is refused with a reason")
    func parse() throws {
        let terms = try SearchTerms.parse(#"  Hello "big World" -spam hel* -"no way" e-mail !!! "#).terms
        #expect(terms.map(\.text) == ["hello", "big world", "spam", "hel", "no way", "e mail"])
        #expect(terms.map(\.prefix) == [false, false, false, true, false, false])
        #expect(terms.map(\.excluded) == [false, false, true, false, true, false])
        for bad in ["", "   ", "!!!", "-spam", #""open"#, "*", "e-mail*", "a*b*", Array(repeating: "w", count: 17).joined(separator: " ")] {
            #expect(throws: SearchSyntaxError.self, "\(bad)") { try SearchTerms.parse(bad) }
        }
    }
}

/// Fans out until `expecting` deliveries are made or 5 s pass: Postgres takes an event once every
/// transaction before it has ended, and other tests' transactions on the same server run meanwhile.
func fannedOut(_ store: any ChatStore, webhook: String, events: Set<String>, limit: Int, now: Date, expecting: Int) async throws -> Int {
    var made = 0
    for _ in 0..<100 where made < expecting {
        made += try await store.fanOutWebhookEvents(webhook: webhook, events: events, limit: limit, now: now)
        if made < expecting { try await Task.sleep(for: .milliseconds(50)) }
    }
    return made
}
