/// One versioned SQL migration (`V<version>__<name>.sql`).
public struct Migration: Sendable, Equatable {
    public var version: Int
    public var fileName: String
    public var sql: String

    public init(version: Int, fileName: String, sql: String) {
        self.version = version
        self.fileName = fileName
        self.sql = sql
    }

    /// The description part of the file name (`create_chat_sessions_table`).
    public var name: String {
        var base = fileName
        if base.hasSuffix(".sql") { base.removeLast(4) }
        let parts = base.split(separator: "__", maxSplits: 1)
        return parts.count == 2 ? String(parts[1]) : base
    }

    /// CRC-32 of the SQL text, as Flyway records it; a changed applied file no longer matches.
    public var checksum: Int32 {
        Int32(bitPattern: CRC32.checksum(Array(sql.utf8)))
    }
}

/// A migration already recorded in `schema_history`.
public struct AppliedMigration: Sendable, Equatable {
    public var version: Int
    public var name: String
    public var checksum: Int32
    public var appliedAt: String

    public init(version: Int, name: String, checksum: Int32, appliedAt: String) {
        self.version = version
        self.name = name
        self.checksum = checksum
        self.appliedAt = appliedAt
    }
}

/// A migration's state in one database, as `chat-backend migrate` lists it.
public struct MigrationStatus: Sendable, Equatable {
    public var version: Int
    public var name: String
    /// When it was applied; nil while pending.
    public var appliedAt: String?
}

/// The ordered migrations of one SQL dialect.
public struct MigrationSet: Sendable {
    public var dialect: String
    public var migrations: [Migration]

    public init(dialect: String, migrations: [Migration]) {
        self.dialect = dialect
        self.migrations = migrations.sorted { $0.version < $1.version }
    }

    /// Checks what a database has applied against this set and returns what is left to apply.
    ///
    /// Throws when an applied migration's file changed (checksum), when the database has a version this
    /// binary does not know (it was migrated by a newer release), or when versions are not contiguous.
    public func pending(applied: [AppliedMigration]) throws -> [Migration] {
        let known = Dictionary(uniqueKeysWithValues: migrations.map { ($0.version, $0) })
        for record in applied {
            guard let migration = known[record.version] else {
                throw StoreError(
                    .invalid,
                    "the database has migration V\(record.version) (\(record.name)) that this chat-backend does not know; it was migrated by a newer release"
                )
            }
            if migration.checksum != record.checksum {
                throw StoreError(
                    .invalid,
                    "migration V\(record.version) \(migration.fileName) was changed after it was applied (checksum \(record.checksum) in schema_history, \(migration.checksum) now): the database was migrated by a different build of chat-backend; run that build, or restore the database from a backup"
                )
            }
        }
        let appliedVersions = Set(applied.map(\.version))
        return migrations.filter { !appliedVersions.contains($0.version) }
    }

    /// Status of every known migration given what a database has applied.
    public func status(applied: [AppliedMigration]) -> [MigrationStatus] {
        let byVersion = Dictionary(applied.map { ($0.version, $0) }, uniquingKeysWith: { a, _ in a })
        return migrations.map { MigrationStatus(version: $0.version, name: $0.name, appliedAt: byVersion[$0.version]?.appliedAt) }
    }
}

enum CRC32 {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}

/// What `check-config` reports about a database without changing it.
public struct StoreInspection: Sendable {
    /// The server's version (Postgres) or the library's (SQLite).
    public var serverVersion: String
    /// Whether the database exists yet (a SQLite file is created on first start).
    public var exists: Bool
    public var migrations: [MigrationStatus]

    public init(serverVersion: String, exists: Bool, migrations: [MigrationStatus]) {
        self.serverVersion = serverVersion
        self.exists = exists
        self.migrations = migrations
    }
}
