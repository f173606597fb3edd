#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Hummingbird
import Logging
import NIOCore
import Prometheus
import Service
import ServiceLifecycle
import Storage

@main
struct ChatBackend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat-backend",
        abstract: "A chat server: REST chat sessions with JWT auth and rate limits, stored in SQLite or Postgres.",
        version: "chat-backend \(ChatBackendVersion.current)",
        subcommands: [Serve.self, Migrate.self, CheckConfig.self, UserCommand.self, ExportUser.self, Backup.self, Copy.self, Version.self],
        defaultSubcommand: Serve.self
    )
}

/// Opens the configured store, applying migrations.
func openStore(_ config: AppConfig, logger: Logger) async throws -> any ChatStore {
    switch config.database {
    case .sqlite(let path):
        try AppConfig.makeDirectory(parentOf: path)
        return try await SQLiteStore.open(path: path, options: .init(synchronous: config.synchronous), logger: logger)
    case .postgres(let conninfo):
        return try await PostgresStore.open(
            conninfo: conninfo, options: .init(poolSize: config.databasePoolSize, statementTimeout: .seconds(config.databaseTimeout)), logger: logger
        )
    }
}

func makeLogger(_ level: Logger.Level) -> Logger {
    var logger = Logger(label: "chat-backend")
    logger.logLevel = level
    return logger
}

/// A command that could not do its work: one line on standard error and an exit code, no usage text.
struct CommandFailure: Error {
    let message: String
    let code: Int32

    /// EX_NOUSER: no user by that name.
    static func noUser(_ name: String) -> CommandFailure { CommandFailure(message: "no user named '\(name)'", code: 67) }
    /// EX_CANTCREAT: an output file exists or cannot be created.
    static func cannotCreate(_ message: String) -> CommandFailure { CommandFailure(message: message, code: 73) }
    /// EX_IOERR: writing an output file failed.
    static func ioError(_ message: String) -> CommandFailure { CommandFailure(message: message, code: 74) }
}

/// Runs an async body and turns every error into a clean exit with one line saying what is wrong.
func reportingErrors<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as CommandFailure {
        FileHandleStderr.write("chat-backend: \(error.message)\n")
        throw ExitCode(error.code)
    } catch let error as ConfigError {
        FileHandleStderr.write("chat-backend: \(error.description)\n")
        throw ExitCode(78)  // EX_CONFIG
    } catch let error as StoreError {
        FileHandleStderr.write("chat-backend: \(oneLine(error.debugDescription))\n")
        throw ExitCode(error.kind == .unavailable ? 69 : 65)  // EX_UNAVAILABLE, EX_DATAERR
    } catch let error as ExitCode {
        throw error
    } catch let error where error is ValidationError || error is CleanExit {
        throw error
    } catch {
        FileHandleStderr.write("chat-backend: \(oneLine(String(describing: error)))\n")
        throw ExitCode(70)  // EX_SOFTWARE
    }
}

/// An error's text on one line.
func oneLine(_ text: String) -> String {
    text.split(whereSeparator: \.isNewline).map { String($0).trimmed }.joined(separator: " ")
}

enum FileHandleStderr {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the server (the default command).")

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        // Whatever the caller's umask, what the server creates (database, its -wal/-shm, the key file,
        // the state directory) is its own only.
        umask(0o077)
        try await reportingErrors {
            let config = try await AppConfig.load(options: options)
            LoggingSystem.bootstrap { label in
                var handler = DeferredMetadataLogHandler(StreamLogHandler.standardError(label: label))
                handler.logLevel = config.logLevel
                return handler
            }
            let logger = makeLogger(config.logLevel)
            for warning in config.warnings { logger.warning("\(warning)") }
            Systemd.notify("STATUS=Opening storage and applying migrations")
            let store = try await openStore(config, logger: logger)
            let registry = PrometheusCollectorRegistry()
            let listener: Listener
            let where_: String
            if let fd = Systemd.inheritedSocket() {
                listener = .inheritedSocket(fd)
                where_ = "the socket passed by systemd"
            } else {
                listener = .address(host: config.host, port: config.port)
                where_ = "\(config.host):\(config.port)"
            }
            var services: [any Service] = []
            if let interval = Systemd.watchdogInterval() {
                services.append(WatchdogService(interval: interval))
            }
            let backend = store.backend
            if !config.agents.isEmpty {
                logger.info("agents loaded", metadata: ["file": .string(config.agents.source), "agents": .string(config.agents.agentNames.joined(separator: ","))])
            }
            let storeService = StoreService(store: store, willClose: {
                Systemd.notify("STATUS=Flushing writes and checkpointing")
            })
            let hub = RealtimeHub(
                maxConnectionsPerUser: config.service.realtimeMaxConnectionsPerUser,
                maxUnauthenticatedPerIP: config.service.realtimeMaxUnauthenticatedPerIP
            )
            let app = buildApplication(
                config: config.service,
                dependencies: ApplicationDependencies(
                    store: store, hub: hub,
                    registry: registry, logger: logger,
                    onListening: {
                        logger.info("chat-backend listening", metadata: ["on": .string(where_), "storage": .string(backend)])
                        Systemd.notify("READY=1\nSTATUS=Serving on \(where_) with \(backend) storage")
                    },
                    services: services,
                    agents: config.agents,
                    webhooks: config.webhooks,
                    storeService: storeService
                ),
                listener: listener
            )
            // Services stop in reverse order: the coordinator hears of shutdown before the server.
            let group = ServiceGroup(configuration: .init(
                services: [app, ShutdownCoordinator(hub: hub, logger: logger)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger
            ))
            do {
                try await group.run()
            } catch let error as IOError where error.errnoCode == EADDRINUSE || error.errnoCode == EADDRNOTAVAIL || error.errnoCode == EACCES {
                await storeService.close()
                throw CommandFailure(message: "cannot listen on \(where_): \(String(cString: strerror(error.errnoCode)))", code: 71)
            } catch {
                logger.error("server stopped with an error", metadata: ["error": .string(String(reflecting: error))])
                await storeService.close()
                throw error
            }
            await storeService.close()  // closed already by the group, unless it never ran
            logger.info("stopped cleanly")
        }
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply pending database migrations and list them all.")

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        try await reportingErrors {
            let config = try await AppConfig.load(options: options, createSecret: false)
            let store = try await openStore(config, logger: makeLogger(config.logLevel))
            let status = try await store.migrationStatus()
            await store.close()
            print("\(store.backend) \(config.databaseURLText.hasPrefix("sqlite") ? config.databaseURLText : AppConfig.maskURL(config.databaseURLText))")
            for migration in status {
                print("V\(migration.version)  \(migration.name)  \(migration.appliedAt.map { "applied \($0)" } ?? "pending")")
            }
        }
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Validate the configuration and print it with secrets masked."
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        try await reportingErrors {
            let config = try await AppConfig.load(options: options, createSecret: false)
            let width = config.summary.map(\.0.count).max() ?? 0
            for (key, value) in config.summary {
                print(key + String(repeating: " ", count: width - key.count) + "  " + value)
            }
            for warning in config.warnings { print("\nwarning: \(warning)") }
            let inspection: StoreInspection
            switch config.database {
            case .sqlite(let path):
                inspection = try await SQLiteStore.inspect(path: path)
                print("\nstorage: SQLite \(inspection.serverVersion)\(inspection.exists ? "" : " (the database file is created on first start)")")
            case .postgres(let conninfo):
                inspection = try await PostgresStore.inspect(conninfo: conninfo)
                print("\nstorage: connected to PostgreSQL \(inspection.serverVersion)")
            }
            let pending = inspection.migrations.filter { $0.appliedAt == nil }
            print("migrations: \(inspection.migrations.count - pending.count) applied, \(pending.count) pending\(pending.isEmpty ? "" : " (applied on start: " + pending.map { "V\($0.version)" }.joined(separator: ", ") + ")")")
            print("configuration is valid")
        }
    }
}

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "user", abstract: "Manage users.", subcommands: [AddUser.self])
}

struct AddUser: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Create a user. The password is read from standard input (one line) or generated and printed."
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "Username: 3-64 of letters, digits, '_', '.', '-'.")
    var name: String

    @Flag(help: "Give the user the admin role.")
    var admin = false

    @Flag(help: "Give the user the agent role (human support staff).")
    var agent = false

    @Flag(name: .customLong("password-stdin"), help: "Read the password from standard input.")
    var passwordStdin = false

    func validate() throws {
        guard (3...64).contains(name.count), name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }) else {
            throw ValidationError("username must be 3-64 of letters, digits, '_', '.', '-'")
        }
        guard !(admin && agent) else { throw ValidationError("choose --admin or --agent, not both") }
    }

    func run() async throws {
        try await reportingErrors {
            var password: String
            var generated = false
            if passwordStdin {
                password = readLine(strippingNewline: true) ?? ""
                guard (8...128).contains(password.count) else { throw ValidationError("password must be 8-128 characters") }
            } else {
                password = SecretGenerator.hex(bytes: 12)
                generated = true
            }
            let config = try await AppConfig.load(options: options, createSecret: false)
            // A new ./data/chat.db holding just this user is never what was meant: an installed service's
            // database is elsewhere.
            if config.databaseIsImplicit, case .sqlite(let path) = config.database, access(path, F_OK) != 0 {
                throw ConfigError(
                    "no database at \(path): outside systemd STATE_DIRECTORY defaults to ./data. For an installed service run "
                        + "sudo -u chat-backend env STATE_DIRECTORY=/var/lib/chat-backend chat-backend user add \(name); "
                        + "to start a new database here, run chat-backend migrate first"
                )
            }
            let store = try await openStore(config, logger: makeLogger(.warning))
            let hasher = PasswordHasher(parameters: config.service.passwordParameters)
            let now = Timestamp.now()
            let user = User(
                id: UUID(), username: name, email: nil, passwordHash: try await hasher.hash(password),
                role: admin ? .admin : (agent ? .agent : .user), createdAt: now, updatedAt: now
            )
            do {
                try await store.createUser(user)
            } catch let error as StoreError where error.kind == .conflict {
                await store.close()
                throw CommandFailure(message: "username '\(name)' is already taken", code: 65)
            }
            await store.close()
            print("created \(user.role.rawValue) \(name) (\(user.id.lowercased))")
            if generated { print("password: \(password)") }
        }
    }
}

struct ExportUser: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-user",
        abstract: "Write everything stored about a user as JSON (for a data-access request).",
        discussion: """
            The account (without its password hash), every session of the user with all of its messages, \
            the messages the user wrote in other users' sessions, and what is known of the files they uploaded \
            (name, type, size, SHA-256). Written to standard output, or to --output \
            (created readable by its owner only). Safe while the server runs.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The username.")
    var name: String

    @Option(name: .shortAndLong, help: "Write to this file (it must not exist) instead of standard output.")
    var output: String?

    func run() async throws {
        try await reportingErrors {
            let config = try await AppConfig.load(options: options, createSecret: false)
            if case .sqlite(let path) = config.database, access(path, F_OK) != 0 { throw ConfigError("DATABASE_URL: \(path) does not exist") }
            if let output, access(output, F_OK) == 0 { throw CommandFailure.cannotCreate("\(output) already exists") }
            let store = try await openStore(config, logger: makeLogger(.warning))
            // Standard output, or a new file only its owner may read (it holds personal data).
            let fd = output.map { open($0, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) } ?? STDOUT_FILENO
            guard fd >= 0 else {
                let reason = String(cString: strerror(errno))
                await store.close()
                throw CommandFailure.cannotCreate("cannot create \(output ?? ""): \(reason)")
            }
            let found: Bool
            do {
                found = try await UserExport.write(username: name, store: store) { bytes in
                    var written = 0
                    while written < bytes.count {
                        let n = bytes[written...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                        if n < 0, errno == EINTR { continue }
                        guard n > 0 else { throw CommandFailure.ioError("writing the export failed: \(String(cString: strerror(errno)))") }
                        written += n
                    }
                }
            } catch {
                await store.close()
                if let output { close(fd); unlink(output) }
                throw error
            }
            await store.close()
            if output != nil { close(fd) }
            if !found {
                if let output { unlink(output) }
                throw CommandFailure.noUser(name)
            }
            if let output { print("export of \(name) written to \(output)") }
        }
    }
}

struct Backup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a consistent copy of the SQLite database to FILE, safe while the server runs.")

    @OptionGroup var options: ConfigOptions

    @Argument(help: "Destination file; must not exist.")
    var file: String

    func run() async throws {
        try await reportingErrors {
            let config = try await AppConfig.load(options: options, createSecret: false)
            guard case .sqlite = config.database else {
                throw ConfigError("backup copies SQLite databases; for Postgres use pg_dump")
            }
            guard access(file, F_OK) != 0 else { throw CommandFailure.cannotCreate("\(file) already exists") }
            let directory = file.contains("/") ? String(file[..<file.lastIndex(of: "/")!]) : "."
            guard access(directory.isEmpty ? "/" : directory, W_OK) == 0 else {
                throw CommandFailure.cannotCreate("cannot create \(file): \(String(cString: strerror(errno)))")
            }
            // The copy holds password hashes: only the owner may read it.
            umask(0o077)
            // Read-only: a backup taken before an upgrade must not migrate the running server's database.
            guard case .sqlite(let path) = config.database else { throw ConfigError("not a SQLite database") }
            try SQLiteStore.backup(path: path, to: file)
            print("backup written to \(file)")
        }
    }
}

struct Copy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy every user, session, message and token from one database to another (SQLite ⇄ Postgres).",
        discussion: "Stop the server first. The target is migrated, then filled in id order; counts are compared at the end."
    )

    @Option(help: "Source DATABASE_URL, e.g. sqlite:///var/lib/chat-backend/chat.db")
    var from: String

    @Option(help: "Target DATABASE_URL, e.g. postgresql://chat@localhost/chat")
    var to: String

    @Flag(name: .customLong("allow-non-empty"), help: "Write into a target that already has records (records with existing ids are skipped).")
    var allowNonEmpty = false

    @Option(name: .customLong("batch-size"), help: "Records per transaction.")
    var batchSize = 1000

    func validate() throws {
        guard (1...50_000).contains(batchSize) else { throw ValidationError("--batch-size must be 1 to 50000") }
    }

    func run() async throws {
        try await reportingErrors {
            let logger = makeLogger(.warning)
            let source = try await openCopyStore(from, logger: logger, isSource: true)
            let target: any ChatStore
            do {
                target = try await openCopyStore(to, logger: logger)
            } catch {
                await source.close()
                throw error
            }
            do {
                try await copyAll(from: source, to: target)
            } catch {
                await source.close()
                await target.close()
                throw error
            }
            await source.close()
            await target.close()
        }
    }

    /// Opens one side of the copy. Refused: a database a running server has open (a copy of a changing
    /// source does not add up), and a source that holds no chat-backend database (a mistyped `--from`
    /// would otherwise be migrated and "copied" from).
    private func openCopyStore(_ url: String, logger: Logger, isSource: Bool = false) async throws -> any ChatStore {
        let option = isSource ? "--from" : "--to"
        let running = "\(option): another process (a chat-backend server?) has this database open; stop it before copying"
        do {
            switch try DatabaseLocation.parse(url, key: option) {
            case .sqlite(let path):
                if isSource {
                    guard FileManager.default.fileExists(atPath: path) else { throw ConfigError("\(option): \(path) does not exist") }
                    guard try await SQLiteStore.inspect(path: path).migrations.contains(where: { $0.appliedAt != nil }) else {
                        throw ConfigError("\(option): \(path) holds no chat-backend database; nothing to copy")
                    }
                }
                guard !SQLiteStore.isOpenElsewhere(path: path) else { throw ConfigError(running) }
                try AppConfig.makeDirectory(parentOf: path)
                return try await SQLiteStore.open(path: path, logger: logger)
            case .postgres(let conninfo):
                if isSource {
                    guard try await PostgresStore.inspect(conninfo: conninfo).migrations.contains(where: { $0.appliedAt != nil }) else {
                        throw ConfigError("\(option): the database holds no chat-backend tables; nothing to copy")
                    }
                }
                let store = try await PostgresStore.open(
                    conninfo: PostgresStore.conninfo(conninfo, application: "chat-backend-copy"), options: .init(poolSize: 2), logger: logger
                )
                if try await store.serverSessions() > 0 {
                    await store.close()
                    throw ConfigError(running)
                }
                return store
            }
        } catch let error as StoreError {
            // Which of the two databases it is about.
            throw StoreError(error.kind, "\(option): \(error.message)", detail: error.detail, sql: error.sql)
        }
    }

    private func copyAll(from source: any ChatStore, to target: any ChatStore) async throws {
        let before = try await target.recordCounts()
        guard before.isEmpty || allowNonEmpty else {
            throw ConfigError("the target already holds \(before); refusing to copy into it (pass --allow-non-empty to merge)")
        }
        let expected = try await source.recordCounts()
        print("copying \(expected)")
        /// Copies one kind of record a page at a time: the page after the cursor, imported in one transaction.
        func pages<R, Cursor>(_ export: (Cursor?) async throws -> [R], cursor: (R) -> Cursor, _ batch: ([R]) -> RecordBatch) async throws {
            var position: Cursor?
            while true {
                let page = try await export(position)
                guard let last = page.last else { return }
                try await target.importRecords(batch(page))
                position = cursor(last)
            }
        }
        try await pages({ try await source.exportUsers(after: $0, limit: batchSize) }, cursor: \.id) { RecordBatch(users: $0) }
        try await pages({ try await source.exportRefreshTokens(after: $0, limit: batchSize) }, cursor: \.id) { RecordBatch(refreshTokens: $0) }
        try await target.importRecords(RecordBatch(revokedAccessTokens: try await source.exportRevokedAccessTokens()))
        try await pages({ try await source.exportSessions(after: $0, limit: batchSize) }, cursor: \.id) { RecordBatch(sessions: $0) }
        try await pages({ try await source.exportMessages(after: $0, limit: batchSize) }, cursor: \.id) { RecordBatch(messages: $0) }
        // Attachments one at a time, each with its bytes in one transaction (at most ATTACHMENT_MAX_BYTES).
        var attachmentCursor: UUID?
        while true {
            let attachments = try await source.exportAttachments(after: attachmentCursor, limit: batchSize)
            guard let last = attachments.last else { break }
            for attachment in attachments {
                var chunks: [AttachmentChunk] = []
                let count = (Int(attachment.size) + Attachment.chunkSize - 1) / Attachment.chunkSize
                for seq in 0..<count {
                    guard let data = try await source.attachmentChunk(id: attachment.id, seq: seq) else {
                        throw ConfigError("attachment \(attachment.id.lowercased) lacks its bytes (chunk \(seq)) in the source")
                    }
                    chunks.append(AttachmentChunk(attachmentId: attachment.id, seq: seq, data: data))
                }
                try await target.importRecords(RecordBatch(attachments: [attachment], attachmentChunks: chunks))
            }
            attachmentCursor = last.id
        }
        try await pages({ try await source.exportSessionReads(after: $0, limit: batchSize) }, cursor: \.sessionId) { RecordBatch(sessionReads: $0) }
        // The webhook outbox: the server on the target delivers what was still pending.
        try await pages({ try await source.exportWebhookEvents(after: $0, limit: batchSize) }, cursor: \.seq) { RecordBatch(webhookEvents: $0) }
        try await target.importRecords(RecordBatch(webhookCursors: try await source.exportWebhookCursors()))
        let after = try await target.recordCounts()
        let complete = before.isEmpty
            ? after == expected
            : after.users >= expected.users && after.sessions >= expected.sessions && after.messages >= expected.messages
        guard complete else {
            throw ConfigError("copy verification failed: source has \(expected), target has \(after)")
        }
        print("done: target now holds \(after)")
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")

    func run() {
        print("chat-backend \(ChatBackendVersion.current)")
    }
}
