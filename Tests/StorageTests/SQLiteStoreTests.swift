import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Storage

@Suite("SQLite specifics")
struct SQLiteStoreTests {
    @Test("an applied migration that changed stops start-up with a clear error")
    func editedMigration() async throws {
        let fixture = StoreBackends.sqlite()
        defer { fixture.cleanup() }
        let (dir, path) = try temporaryDatabase("edit")
        defer { try? FileManager.default.removeItem(at: dir) }
        try await SQLiteStore.open(path: path).close()

        var edited = MigrationSet.sqlite.migrations
        edited[0].sql += "\n-- edited"
        do {
            _ = try await SQLiteStore.open(path: path, migrations: MigrationSet(dialect: "sqlite", migrations: edited))
            Issue.record("opened with an edited migration")
        } catch let error as StoreError {
            #expect(error.kind == .invalid)
            #expect(error.message.contains("V1") && error.message.contains("changed after it was applied"))
        }

        // A database migrated by a newer release (unknown version) is refused too.
        do {
            _ = try await SQLiteStore.open(path: path, migrations: MigrationSet(dialect: "sqlite", migrations: Array(MigrationSet.sqlite.migrations.prefix(3))))
            Issue.record("opened a newer database")
        } catch let error as StoreError {
            #expect(error.message.contains("newer release"))
        }
    }

    @Test("corruption found while serving stops every read and write; the file is not written to again")
    func corruptionAtRunTime() async throws {
        let (dir, path) = try temporaryDatabase("corrupt")
        defer { try? FileManager.default.removeItem(at: dir) }
        var store = try await SQLiteStore.open(path: path)
        var names: [String] = []
        for i in 0..<2000 {
            let user = Make.user("user\(i)-" + String(repeating: "x", count: 120))
            try await store.createUser(user)
            names.append(user.username)
        }
        await store.close()  // checkpointed: everything is in the main file
        let size = try #require(FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        #expect(size > 4096 * 80)

        // The damage appears after the start-up check (a failing disk, a stray write): 40 pages near the end,
        // among the users' rows and index, away from the schema the start reads.
        let handle = try #require(FileManager.default.fileExists(atPath: path) ? FileHandle(forUpdatingAtPath: path) : nil)
        try handle.seek(toOffset: UInt64(4096 * (size / 4096 - 45)))
        try handle.write(contentsOf: Data((0..<(4096 * 40)).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }))
        try handle.close()
        let damaged = try Data(contentsOf: URL(fileURLWithPath: path))

        store = try await SQLiteStore.open(path: path, options: .init(checkIntegrity: false))
        var sawCorruption = false
        for name in names {
            do {
                _ = try await store.user(username: name)
            } catch let error as StoreError {
                #expect(error.kind == .corrupt)
                sawCorruption = true
                break
            }
        }
        #expect(sawCorruption, "reading every user never met the damaged pages")
        // From now on nothing runs on the file: not the reads that would work, not the writes.
        await #expect(throws: StoreError.self) { _ = try await store.user(username: names[0]) }
        do {
            try await store.createUser(Make.user())
            Issue.record("a write went into a file known to be corrupt")
        } catch let error as StoreError {
            #expect(error.kind == .corrupt)
        }
        guard case .down(let reason, _) = await store.health() else {
            Issue.record("health is up on a corrupt file")
            return
        }
        #expect(reason == "storage_corrupt")
        await store.close()
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == damaged, "the corrupt file was written to")
    }

    @Test("a failing migration leaves no partial schema")
    func failingMigration() async throws {
        let (dir, path) = try temporaryDatabase("fail")
        defer { try? FileManager.default.removeItem(at: dir) }
        let broken = MigrationSet(dialect: "sqlite", migrations: [
            Migration(version: 1, fileName: "V1__ok.sql", sql: "CREATE TABLE a (x INTEGER);"),
            Migration(version: 2, fileName: "V2__broken.sql", sql: "CREATE TABLE b (y INTEGER); SELECT * FROM missing_table;"),
        ])
        await #expect(throws: StoreError.self) { _ = try await SQLiteStore.open(path: path, migrations: broken) }
        let db = try SQLiteConnection(path: path)
        #expect(try db.query("SELECT version FROM schema_history").count == 1)
        #expect(try db.query("SELECT name FROM sqlite_master WHERE name = 'b'").isEmpty)
    }

    @Test("upgrading to V18 marks sent the uploads that messages already carry, and only those")
    func sentAttachmentsBackfill() async throws {
        let (dir, path) = try temporaryDatabase("v18")
        defer { try? FileManager.default.removeItem(at: dir) }
        let all = MigrationSet.sqlite.migrations
        let v18 = try #require(all.firstIndex { $0.version == 18 })
        let older = try await SQLiteStore.open(path: path, migrations: MigrationSet(dialect: "sqlite", migrations: Array(all[..<v18])))
        let user = Make.user("uploader")
        try await older.createUser(user)
        let session = Make.session(userId: user.id)
        try await older.createSession(session)
        await older.close()
        // Two complete uploads and a message carrying one, as the V17 schema has them.
        let raw = try SQLiteConnection(path: path)
        let now = Timestamp.now(), stamp = Timestamp.format(now)
        let carried = UUIDv7.make(now: now), kept = UUIDv7.make(now: now)
        for id in [carried, kept] {
            try raw.run(
                "INSERT INTO attachments (id, session_id, user_id, filename, content_type, size, created_at, completed_at) VALUES ($1, $2, $3, 'f', 'text/plain', 1, $4, $4)",
                [.text(id.lowercased), .text(session.id.lowercased), .text(user.id.lowercased), .text(stamp)]
            )
        }
        let files = #"[{"id":"\#(carried.lowercased)","filename":"f","contentType":"text/plain","size":1}]"#
        try raw.run("INSERT INTO chat_messages (id, session_id, user_id, content, created_at, updated_at, attachments) VALUES ($1, $2, $3, 'hi', $4, $4, $5)",
                    [.text(UUIDv7.make(now: now).lowercased), .text(session.id.lowercased), .text(user.id.lowercased), .text(stamp), .text(files)])
        raw.close()
        let store = try await SQLiteStore.open(path: path)
        #expect(try await store.attachment(id: carried)?.sentAt == now)
        #expect(try await store.attachment(id: kept)?.sentAt == nil)
        #expect(try await store.deleteUnsentUploads(completedBefore: now.addingTimeInterval(1), limit: 10) == 1)
        #expect(try await store.attachment(id: carried) != nil)
        await store.close()
    }

    @Test("a migration that rebuilds a table keeps the rows referring to it, and one that would orphan rows is refused")
    func tableRebuild() async throws {
        let (dir, path) = try temporaryDatabase("rebuild")
        defer { try? FileManager.default.removeItem(at: dir) }
        let all = MigrationSet.sqlite.migrations
        let rebuild = try #require(all.firstIndex { $0.sql.hasPrefix("-- migration: foreign keys off") })
        // A database from before the users table was rebuilt, with rows that refer to users.
        let older = try await SQLiteStore.open(path: path, migrations: MigrationSet(dialect: "sqlite", migrations: Array(all[..<rebuild])))
        let user = Make.user("before")
        try await older.createUser(user)
        let now = Timestamp.now()
        try await older.insertRefreshToken(RefreshTokenRecord(
            id: UUID(), userId: user.id, familyId: UUID(), tokenHash: String(repeating: "d", count: 64), expiresAt: now.addingTimeInterval(60), createdAt: now
        ))
        let session = Make.session(userId: user.id)
        try await older.createSession(session)
        await older.close()
        // A message and a read marker, written as that schema has them (the store writes today's columns).
        let raw = try SQLiteConnection(path: path)
        let stamp = Timestamp.format(now), messageId = UUIDv7.make(now: now).lowercased
        try raw.run("INSERT INTO chat_messages (id, session_id, user_id, content, created_at, updated_at) VALUES ($1, $2, $3, 'hi', $4, $4)",
                    [.text(messageId), .text(session.id.lowercased), .text(user.id.lowercased), .text(stamp)])
        try raw.run("INSERT INTO session_reads (session_id, user_id, last_read_id, read_at) VALUES ($1, $2, $3, $4)",
                    [.text(session.id.lowercased), .text(user.id.lowercased), .text(messageId), .text(stamp)])
        raw.close()
        let store = try await SQLiteStore.open(path: path)
        #expect(try await store.recordCounts() == RecordCounts(users: 1, sessions: 1, messages: 1, refreshTokens: 1, sessionReads: 1))
        #expect(try await store.user(id: user.id) == user)
        // Foreign keys are enforced again, and cascade from the rebuilt table.
        let db = try SQLiteConnection(path: path)
        #expect(try db.query("PRAGMA foreign_key_check").isEmpty)
        db.close()
        let orphan = RefreshTokenRecord(
            id: UUID(), userId: UUID(), familyId: UUID(), tokenHash: String(repeating: "e", count: 64), expiresAt: now.addingTimeInterval(60), createdAt: now
        )
        await #expect(throws: StoreError.self) { try await store.insertRefreshToken(orphan) }
        #expect(try await store.deleteUser(id: user.id, now: now))
        let left = try await store.recordCounts()
        #expect(left.refreshTokens == 0 && left.sessionReads == 0)
        await store.close()

        // A rebuild that would leave rows without the row they refer to is rolled back.
        let path2 = dir.appendingPathComponent("orphan.db").path
        let base = MigrationSet(dialect: "sqlite", migrations: Array(all[..<rebuild]))
        let seeded = try await SQLiteStore.open(path: path2, migrations: base)
        let owner = Make.user("owner")
        try await seeded.createUser(owner)
        try await seeded.insertRefreshToken(RefreshTokenRecord(
            id: UUID(), userId: owner.id, familyId: UUID(), tokenHash: String(repeating: "f", count: 64), expiresAt: now.addingTimeInterval(60), createdAt: now
        ))
        await seeded.close()
        let losing = Migration(
            version: all[rebuild].version, fileName: "V\(all[rebuild].version)__lose_users.sql",
            sql: "-- migration: foreign keys off\nDELETE FROM users;"
        )
        await #expect(throws: StoreError.self) {
            _ = try await SQLiteStore.open(path: path2, migrations: MigrationSet(dialect: "sqlite", migrations: base.migrations + [losing]))
        }
        let check = try SQLiteConnection(path: path2)
        #expect(try check.query("SELECT COUNT(*) FROM users").first?.int(0) == 1)
        check.close()
    }

    @Test("the database runs in WAL mode with foreign keys and full sync")
    func pragmas() async throws {
        let (dir, path) = try temporaryDatabase("pragma")
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try await SQLiteStore.open(path: path)
        let db = try SQLiteConnection(path: path)
        #expect(try db.query("PRAGMA journal_mode").first?.string(0) == "wal")
        await store.close()
        // After close the WAL is checkpointed and truncated.
        let wal = try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int
        #expect((wal ?? 0) == 0)
    }

    @Test("the search index follows messages inserted, edited and removed in one transaction and in concurrent commits")
    func searchIndexedPerCommit() async throws {
        let (dir, path) = try temporaryDatabase("search")
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try await SQLiteStore.open(path: path)
        let user = Make.user()
        try await store.createUser(user)
        let session = Make.session(userId: user.id)
        try await store.createSession(session)
        func hits(_ q: String) async throws -> Set<String> {
            Set(try await store.searchMessages(MessageSearch(terms: try SearchTerms.parse(q), reader: nil, limit: 100)).hits.map(\.message.content))
        }
        // Concurrent sends share group commits: every one is searchable once its append returned.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<120 {
                group.addTask { try await store.appendMessage(Make.message(session.id, userId: user.id, content: "marmot \(i)"), now: Timestamp.now()).expectCreated() }
            }
            try await group.waitForAll()
        }
        #expect(try await hits("marmot").count == 100)  // the page limit
        #expect(try await store.searchMessages(MessageSearch(terms: try SearchTerms.parse("marmot"), reader: nil, limit: 100)).hasMore)
        // Inserted then edited, and inserted then removed, before the transaction commits.
        let edited = Make.message(session.id, userId: user.id, content: "heron draft"), removed = Make.message(session.id, userId: user.id, content: "heron gone")
        try await store.write(atomic: true) { db in
            try db.run(Codec.message.insert, Codec.message.values(edited, .sqlite))
            try db.run(Codec.message.insert, Codec.message.values(removed, .sqlite))
            try db.run("UPDATE chat_messages SET content = 'heron final' WHERE id = $1", [.id(edited.id)])
            try db.run("DELETE FROM chat_messages WHERE id = $1", [.id(removed.id)])
        }
        #expect(try await hits("heron") == ["heron final"])
        #expect(try await hits("draft").isEmpty)
        #expect(try await hits("gone").isEmpty)
        // Edited and removed after being indexed.
        _ = try await store.editMessage(sessionId: session.id, id: edited.id, content: "egret final", now: Timestamp.now())
        #expect(try await hits("heron").isEmpty)
        #expect(try await hits("egret") == ["egret final"])
        _ = try await store.write(atomic: true) { db in try db.run("DELETE FROM chat_messages WHERE id = $1", [.id(edited.id)]) }
        #expect(try await hits("egret").isEmpty)
        #expect(try await hits("final").isEmpty)
        // Nothing is left queued, and FTS5 finds its index consistent with the messages.
        let check = try SQLiteConnection(path: path)
        #expect(try check.query("SELECT count(*) FROM message_search_queue").first?.int(0) == 0)
        try check.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 1)")
        check.close()
        await store.close()
    }

    @Test("online backup copies a consistent database")
    func backup() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("backup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try await SQLiteStore.open(path: dir.appendingPathComponent("chat.db").path)
        let session = Make.session(userId: UUID())
        try await store.createSession(session)
        for i in 0..<50 { try await store.appendMessage(Make.message(session.id, userId: nil, content: "b\(i)"), now: Timestamp.now()).expectCreated() }
        let target = dir.appendingPathComponent("copy.db").path
        try await store.backup(to: target)
        await store.close()
        let copy = try await SQLiteStore.open(path: target)
        #expect(try await copy.statistics().totalMessages == 50)
        await copy.close()
    }

    @Test("embedded migrations match the files under migrations/")
    func embeddedMatchFiles() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for set in [MigrationSet.sqlite, MigrationSet.postgres] {
            let dir = root.appendingPathComponent("migrations/\(set.dialect)")
            let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".sql") }.sorted()
            #expect(files.sorted() == set.migrations.map(\.fileName).sorted())
            for migration in set.migrations {
                let text = try String(contentsOf: dir.appendingPathComponent(migration.fileName), encoding: .utf8)
                #expect(text.trimmingCharacters(in: .newlines) == migration.sql, "\(migration.fileName) differs from the embedded copy")
            }
        }
    }
}

@Suite("Storage values")
struct StorageValueTests {
    /// Each field written by its codec and read back from those values, with no field at its `blank` value.
    func roundTrip<R: Equatable>(_ codec: RowCodec<R>, _ record: R) throws {
        #expect(codec.columns.count == Mirror(reflecting: record).children.count, "\(codec.table): a field of \(R.self) has no column")
        let values = codec.values(record, .sqlite)
        #expect(!values.contains(.null), "\(codec.table): the sample leaves a field empty")
        #expect(try codec.decode(SQLRow(values: values)) == record, "\(codec.table)")
    }

    @Test("every field of every record has its column in the codec and reads back as it was written")
    func codecs() throws {
        let at = { (s: Double) in Date(timeIntervalSince1970: 1_767_323_045 + s) }
        let (a, b, c) = (UUIDv7.make(), UUIDv7.make(), UUIDv7.make())
        try roundTrip(Codec.user, User(
            id: a, username: "ann", email: "ann@example.com", passwordHash: "h", role: .agent, createdAt: at(1), updatedAt: at(2), disabledAt: at(3)
        ))
        try roundTrip(Codec.session, ChatSession(
            id: a, userId: b, metadata: .object(["k": .int(1)]), state: .resolved, isResolved: true, expiresAt: at(1), resolvedAt: at(2),
            createdAt: at(3), updatedAt: at(4), agent: "echo", handoff: .assigned, assigneeId: c, handoffAt: at(5)
        ))
        try roundTrip(Codec.message, ChatMessage(
            id: a, sessionId: b, userId: c, content: "hi <b>", type: "file", direction: .outbound, metadata: .object(["x": .string("y")]),
            clientMessageId: "c-1", createdAt: at(1), updatedAt: at(2), editedAt: at(3), deletedAt: at(4),
            attachments: [AttachmentRef(id: c, filename: "a.png", contentType: "image/png", size: 42)]
        ))
        try roundTrip(Codec.attachment, Attachment(
            id: a, sessionId: b, userId: c, filename: "a.png", contentType: "image/png", size: 42, sha256: "ab", createdAt: at(1),
            completedAt: at(2), sentAt: at(3)
        ))
        try roundTrip(Codec.refreshToken, RefreshTokenRecord(
            id: a, userId: b, familyId: c, tokenHash: "t", expiresAt: at(1), createdAt: at(2), usedAt: at(3), revokedAt: at(4)
        ))
        try roundTrip(Codec.revokedAccessToken, RevokedAccessToken(jti: "j", expiresAt: at(1)))
        try roundTrip(Codec.sessionRead, SessionRead(sessionId: a, userId: b, lastReadId: c, readAt: at(1)))
    }

    @Test("timestamps are RFC 3339 UTC with milliseconds and parse back")
    func timestamps() throws {
        let date = Date(timeIntervalSince1970: 1_767_323_045.678)
        #expect(Timestamp.format(date) == "2026-01-02T03:04:05.678Z")
        #expect(Timestamp.parse("2026-01-02T03:04:05.678Z") == date)
        #expect(Timestamp.parse("2026-01-02T04:04:05.678+01:00") == date)
        #expect(Timestamp.parse("2026-01-02 03:04:05.678+00") == date)
        #expect(Timestamp.parse("2026-01-02 04:04:05.678+0100") == date)
        #expect(Timestamp.parse("2026-01-02T03:04:05Z") == Date(timeIntervalSince1970: 1_767_323_045))
        #expect(Timestamp.parse("2026-13-02T03:04:05Z") == nil)
        #expect(Timestamp.parse("yesterday") == nil)
        #expect(Timestamp.format(Date(timeIntervalSince1970: -0.5)) == "1969-12-31T23:59:59.500Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: -1e15)) == "0001-01-01T00:00:00.000Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1e15)) == "9999-12-31T23:59:59.999Z")
        // Calendar arithmetic agrees with the C library's gmtime/timegm over the whole range, leap days included.
        var generator = SystemRandomNumberGenerator()
        let samples = (0..<3000).map { _ in Int64.random(in: -62_135_596_800...253_402_300_799, using: &generator) }
            + [951_782_400, -2_203_891_200, 4_107_456_000, 0, -1, 86_399, 86_400]  // 2000-02-29, 1900-03-01, 2100-02-28
        for seconds in samples {
            var t = time_t(seconds)
            var parts = tm()
            gmtime_r(&t, &parts)
            let expected = String(
                format: "%04d-%02d-%02dT%02d:%02d:%02d.250Z", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec
            )
            let date = Date(timeIntervalSince1970: Double(seconds) + 0.25)
            #expect(Timestamp.format(date) == expected)
            #expect(Timestamp.parse(expected) == date, "\(expected)")
        }
        // A day past the end of its month carries over, as timegm does; leap seconds become the next minute.
        #expect(Timestamp.parse("2026-02-31T00:00:00Z") == Timestamp.parse("2026-03-03T00:00:00Z"))
        #expect(Timestamp.parse("2026-06-30T23:59:60Z") == Timestamp.parse("2026-07-01T00:00:00Z"))
    }

    @Test("UUIDv7 ids are version 7 and strictly increasing within one millisecond")
    func uuidv7() {
        let now = Date()
        let ids = (0..<2000).map { _ in UUIDv7.make(now: now) }
        let texts = ids.map(\.lowercased)
        #expect(texts == texts.sorted())
        #expect(Set(texts).count == ids.count)
        #expect(texts.allSatisfy { $0[$0.index($0.startIndex, offsetBy: 14)] == "7" })
        let later = UUIDv7.make(now: now.addingTimeInterval(1))
        #expect(later.lowercased > texts.last!)
        // The 62 random bits (variant 10) differ from id to id across several refills of the random pool.
        let randomTails = ids.map { id in withUnsafeBytes(of: id.uuid) { Array($0[8...]) } }
        #expect(randomTails.allSatisfy { $0[0] & 0xC0 == 0x80 } && Set(randomTails).count == ids.count)
        #expect(Set(randomTails.map { $0[7] }).count > 200)
    }

    @Test("UUID text is canonical lowercase and parses back in either case")
    func uuidText() {
        for _ in 0..<100 {
            let id = UUID()
            #expect(id.lowercased == id.uuidString.lowercased())
            #expect(UUID(text: id.lowercased) == id && UUID(text: id.uuidString) == id)
        }
        #expect(UUID(text: "not-a-uuid") == nil)
        #expect(UUID(text: "0123456789abcdef0123456789abcdef0123") == nil)
        #expect(UUID(text: "0123456g-89ab-cdef-0123-456789abcdef") == nil)
    }

    @Test("migration checksums are CRC-32 and names come from file names")
    func checksum() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        let m = Migration(version: 3, fileName: "V3__create_updated_at_trigger.sql", sql: "x")
        #expect(m.name == "create_updated_at_trigger")
    }
}

@Suite("JSON codec")
struct JSONCodecTests {
    @Test("parses every JSON form and writes it back")
    func roundTrip() throws {
        let text = #"{"a":[1,-2,3.5,1e3,true,false,null],"b":"q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","c":{},"d":[]}"#
        let value = try JSONValue.parse(bytes: Array(text.utf8))
        #expect(value["a"] == .array([.int(1), .int(-2), .double(3.5), .double(1000), .bool(true), .bool(false), .null]))
        #expect(value["b"] == .string("q\"\\/\u{8}\u{c}\n\r\té😀"))
        #expect(JSONValue.parse(value.jsonText()) == value)
    }

    @Test("refuses invalid documents", arguments: [
        "", "{", "[1,]", "{\"a\":1,}", "01", "1.", "-", "+1", "\"\\x\"", "\"\\ud800\"", "\"a\nb\"", "tru", "{} x", "{'a':1}", "NaN", "1e400",
        String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
    ])
    func invalid(_ text: String) {
        #expect(JSONValue.parse(text) == nil, "\(text)")
    }

    @Test("refuses invalid UTF-8")
    func badUTF8() {
        #expect(throws: (any Error).self) { try JSONValue.parse(bytes: [0x22, 0xFF, 0x22]) }
    }
}

extension JSONValue {
    subscript(_ key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }
}

/// A new directory for a test's database file: (the directory, the file's path in it).
func temporaryDatabase(_ prefix: String) throws -> (URL, String) {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return (dir, dir.appendingPathComponent("chat.db").path)
}
