#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What differs between SQLite and Postgres in the statements the stores share. Statements are written
/// once, with `$n` placeholders; UUIDs, timestamps (RFC 3339) and JSON are bound as text on both (Postgres
/// casts them to its column types), and `ON CONFLICT … DO NOTHING` and `RETURNING` are the same on both.
struct SQLDialect: Sendable {
    /// The migrations written for this database (the store's own set, which `migrationStatus` reports on).
    var migrations: MigrationSet
    /// How a boolean is bound: SQLite has no boolean type (0 and 1), Postgres takes `true`/`false`.
    let flag: @Sendable (Bool) -> SQLValue
    /// Ends a SELECT of rows the transaction is about to change: a row lock on Postgres; SQLite's single
    /// writer needs none.
    let forUpdate: String
    /// Ends a SELECT of rows to claim: rows another transaction holds are passed over (Postgres).
    let skipLocked: String
    /// Starts a transaction that writes (SQLite takes the write lock at once, so a read never upgrades).
    let begin: String
    /// The column type of a timestamp (SQLite keeps RFC 3339 text, which sorts in time order).
    let timeType: String
    /// The UTC day (`YYYY-MM-DD`) of a timestamp column.
    let day: @Sendable (String) -> String
    /// SQLite: a migration whose first line is `-- migration: foreign keys off` (a table rebuild, the only
    /// way SQLite changes a constraint) runs with foreign key enforcement off, and is checked before it commits.
    let rebuildsTables: Bool
    /// Full-text search over messages (SearchSQL).
    let search: SearchSQL
    /// Statements that turn the event webhooks' triggers on or off. Postgres calls a trigger's function for
    /// every row, so without subscriptions they are switched off; SQLite's triggers test for subscriptions
    /// in their `WHEN` clause and cost next to nothing.
    let webhookTriggers: @Sendable (_ on: Bool) -> [String]

    static let sqlite = SQLDialect(
        migrations: .sqlite, flag: { .integer($0 ? 1 : 0) }, forUpdate: "", skipLocked: "", begin: "BEGIN IMMEDIATE", timeType: "TEXT",
        day: { "substr(\($0), 1, 10)" }, rebuildsTables: true, search: .sqlite, webhookTriggers: { _ in [] }
    )
    static let postgres = SQLDialect(
        migrations: .postgres, flag: { .text($0 ? "true" : "false") }, forUpdate: " FOR UPDATE", skipLocked: " FOR UPDATE OF d SKIP LOCKED", begin: "BEGIN", timeType: "TIMESTAMPTZ",
        day: { "to_char(\($0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')" }, rebuildsTables: false, search: .postgres,
        webhookTriggers: { on in
            ["ALTER TABLE chat_messages \(on ? "ENABLE" : "DISABLE") TRIGGER webhook_message", "ALTER TABLE chat_sessions \(on ? "ENABLE" : "DISABLE") TRIGGER webhook_session"]
        }
    )

    /// This dialect with a store's own migration set.
    func with(_ migrations: MigrationSet) -> SQLDialect {
        var copy = self
        copy.migrations = migrations
        return copy
    }
}

