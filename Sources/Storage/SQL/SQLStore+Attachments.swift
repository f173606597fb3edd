#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Attachments: rows in `attachments`, bytes in `attachment_chunks`, written a chunk per write so an
/// upload never holds the writer (or a transaction) for longer than one chunk.
extension SQLStore {
    public func createAttachment(_ attachment: Attachment) async throws {
        try await write(atomic: false) { [dialect] db in
            try db.run(Codec.attachment.insert, Codec.attachment.values(attachment, dialect))
        }
    }

    public func putAttachmentChunk(_ chunk: AttachmentChunk) async throws {
        try await write(atomic: false) { db in
            try db.run(
                "INSERT INTO attachment_chunks (attachment_id, seq, data) VALUES ($1, $2, $3)",
                [.id(chunk.attachmentId), .int(chunk.seq), .blob(chunk.data)]
            )
        }
    }

    public func completeAttachment(id: UUID, size: Int64, sha256: String, quota: Int64?, now: Date) async throws -> AttachmentCompletion {
        try await write(atomic: true) { [dialect] db in
            guard let upload = try db.select(Codec.attachment, "WHERE id = $1", [.id(id)]).first else { return .notFound }
            if let quota, let owner = upload.userId {
                // Uploads of one user complete one at a time (the row lock on Postgres; SQLite has one writer).
                _ = try db.query("SELECT id FROM users WHERE id = $1\(dialect.forUpdate)", [.id(owner)])
                let used = try db.query(
                    "SELECT COALESCE(SUM(size), 0) FROM attachments WHERE user_id = $1 AND completed_at IS NOT NULL", [.id(owner)]
                ).first?.int(0) ?? 0
                if used + size > quota {
                    try db.run("DELETE FROM attachments WHERE id = $1", [.id(id)])
                    return .overQuota(usedBytes: used)
                }
            }
            try db.run(
                "UPDATE attachments SET size = $2, sha256 = $3, completed_at = $4 WHERE id = $1",
                [.id(id), .integer(size), .text(sha256), .time(now)]
            )
            var complete = upload
            complete.size = size
            complete.sha256 = sha256
            complete.completedAt = now
            return .completed(complete)
        }
    }

    public func deleteAttachment(id: UUID) async throws {
        try await write(atomic: false) { db in try db.run("DELETE FROM attachments WHERE id = $1", [.id(id)]) }
    }

    public func attachment(id: UUID) async throws -> Attachment? {
        try await read { db in try db.select(Codec.attachment, "WHERE id = $1 AND completed_at IS NOT NULL", [.id(id)]).first }
    }

    public func attachmentChunk(id: UUID, seq: Int) async throws -> [UInt8]? {
        try await read { db in
            try db.query(
                "SELECT data FROM attachment_chunks WHERE attachment_id = $1 AND seq = $2", [.id(id), .int(seq)]
            ).first?.bytes(0)
        }
    }

    public func attachments(ids: [UUID], sessionId: UUID) async throws -> [Attachment] {
        guard !ids.isEmpty else { return [] }
        return try await read { db in
            try db.select(
                Codec.attachment,
                "WHERE session_id = $1 AND completed_at IS NOT NULL AND id IN (\(SQL.placeholders(ids.count, after: 1)))",
                [.id(sessionId)] + ids.map(SQLValue.id)
            )
        }
    }

    public func attachments(uploadedBy userId: UUID, after: UUID?, limit: Int) async throws -> [Attachment] {
        try await read { db in
            try db.select(
                Codec.attachment,
                "WHERE user_id = $1 AND completed_at IS NOT NULL\(after == nil ? "" : " AND id > $3") ORDER BY id LIMIT $2",
                [.id(userId), .int(limit)] + (after.map { [.id($0)] } ?? [])
            )
        }
    }

    public func attachmentBytes(userId: UUID) async throws -> Int64 {
        try await read { db in
            try db.query(
                "SELECT COALESCE(SUM(size), 0) FROM attachments WHERE user_id = $1 AND completed_at IS NOT NULL", [.id(userId)]
            ).first?.int(0) ?? 0
        }
    }

    public func deleteAbandonedUploads(startedBefore: Date, limit: Int) async throws -> Int {
        try await write(atomic: true) { db in
            try db.run(
                """
                DELETE FROM attachments WHERE id IN (
                    SELECT id FROM attachments WHERE completed_at IS NULL AND created_at < $1 ORDER BY created_at LIMIT $2
                )
                """, [.time(startedBefore), .int(limit)]
            )
        }
    }

    public func deleteUnsentUploads(completedBefore: Date, limit: Int) async throws -> Int {
        try await write(atomic: true) { db in
            try db.run(
                """
                DELETE FROM attachments WHERE id IN (
                    SELECT id FROM attachments WHERE sent_at IS NULL AND completed_at < $1 ORDER BY completed_at LIMIT $2
                )
                """, [.time(completedBefore), .int(limit)]
            )
        }
    }

    public func exportAttachments(after: UUID?, limit: Int) async throws -> [Attachment] {
        try await read { db in
            try db.select(
                Codec.attachment,
                "WHERE completed_at IS NOT NULL\(after == nil ? "" : " AND id > $2") ORDER BY id LIMIT $1",
                [.int(limit)] + (after.map { [.id($0)] } ?? [])
            )
        }
    }
}
