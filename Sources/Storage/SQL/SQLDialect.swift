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
    /// Where an event stands in the outbox's order, which webhook cursors follow.
    let outbox: OutboxOrder

    static let sqlite = SQLDialect(
        migrations: .sqlite, flag: { .integer($0 ? 1 : 0) }, forUpdate: "", skipLocked: "", begin: "BEGIN IMMEDIATE", timeType: "TEXT",
        day: { "substr(\($0), 1, 10)" }, rebuildsTables: true, search: .sqlite, webhookTriggers: { _ in [] }, outbox: .sqlite
    )
    static let postgres = SQLDialect(
        migrations: .postgres, flag: { .text($0 ? "true" : "false") }, forUpdate: " FOR UPDATE", skipLocked: " FOR UPDATE OF d SKIP LOCKED", begin: "BEGIN", timeType: "TIMESTAMPTZ",
        day: { "to_char(\($0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')" }, rebuildsTables: false, search: .postgres,
        webhookTriggers: { on in
            ["ALTER TABLE chat_messages \(on ? "ENABLE" : "DISABLE") TRIGGER webhook_message", "ALTER TABLE chat_sessions \(on ? "ENABLE" : "DISABLE") TRIGGER webhook_session"]
        },
        outbox: .postgres
    )

    /// This dialect with a store's own migration set.
    func with(_ migrations: MigrationSet) -> SQLDialect {
        var copy = self
        copy.migrations = migrations
        return copy
    }
}

/// The outbox's order. SQLite's one writer commits events in the order of their numbers (`seq`). On
/// Postgres numbers are drawn before transactions commit, in any order among concurrent ones, so events
/// are ordered by their transaction's id, then number, and taken only once every transaction before them
/// has ended (V20): a position is (`last_txid`, `last_seq`), and nothing can appear behind it later. A
/// transaction anywhere on the Postgres server holds that back while it runs; after a minute an event is
/// taken anyway (so another application's long transaction delays deliveries by a minute at most, and
/// only a transaction of this database running longer than that could have its events passed over).
struct OutboxOrder: Sendable {
    /// Positions have a transaction id (Postgres), bound and read as text.
    let byTransaction: Bool

    /// The position columns of a cursor (`c`) or an event (`e`), text where they are not numbers.
    func position(cursor c: String) -> String { byTransaction ? "\(c).last_seq, \(c).last_txid::text" : "\(c).last_seq" }
    func position(event e: String) -> String { byTransaction ? "\(e).seq, \(e).txid::text" : "\(e).seq" }
    /// A cursor at the newest event (the SELECT list after the webhook's name).
    var newest: String { byTransaction ? "COALESCE(MAX(seq), 0), COALESCE(MAX(txid), '0'::xid8)" : "COALESCE(MAX(seq), 0)" }
    /// The cursor columns a position is written to.
    var cursorColumns: String { byTransaction ? "last_seq, last_txid" : "last_seq" }
    /// Event `e` comes after the position (`seq`, `txid`), and may be taken now.
    func after(_ e: String, seq: String, txid: String) -> String {
        byTransaction
            ? """
              (\(e).txid, \(e).seq) > (\(txid)::xid8, \(seq))
              AND (\(e).txid < pg_snapshot_xmin(pg_current_snapshot()) OR \(e).created_at < now() - interval '1 minute')
              """
            : "\(e).seq > \(seq)"
    }
    /// Event `e` is at or before cursor `c`.
    func passed(_ e: String, cursor c: String) -> String {
        byTransaction ? "(\(e).txid, \(e).seq) <= (\(c).last_txid, \(c).last_seq)" : "\(e).seq <= \(c).last_seq"
    }
    func order(_ e: String, descending: Bool = false) -> String {
        let direction = descending ? " DESC" : ""
        return byTransaction ? "\(e).txid\(direction), \(e).seq\(direction)" : "\(e).seq\(direction)"
    }
    /// Sets a cursor's position to the one bound at $2 (number) and $3 (transaction).
    var advance: String { byTransaction ? "last_seq = $2, last_txid = $3::xid8" : "last_seq = $2" }
    /// An upsert's update of a cursor to the excluded row's position, only when that is further.
    var takeFurther: String {
        byTransaction
            ? "last_seq = excluded.last_seq, last_txid = excluded.last_txid WHERE (excluded.last_txid, excluded.last_seq) > (webhook_cursors.last_txid, webhook_cursors.last_seq)"
            : "last_seq = excluded.last_seq WHERE excluded.last_seq > webhook_cursors.last_seq"
    }
    /// A position read as (number, transaction text or nil), and bound back the same way.
    func read(_ row: SQLRow, at column: Int) throws -> (seq: Int64, txid: String?) {
        (try row.int(column), byTransaction ? try row.string(column + 1) : nil)
    }
    func bind(_ position: (seq: Int64, txid: String?)) -> [SQLValue] {
        [.integer(position.seq)] + (byTransaction ? [.text(position.txid ?? "0")] : [])
    }

    static let sqlite = OutboxOrder(byTransaction: false)
    static let postgres = OutboxOrder(byTransaction: true)
}
