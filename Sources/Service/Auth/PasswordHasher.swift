import NIOPosix
import Synchronization

/// scrypt password hashes in PHC string form (`$scrypt$ln=14,r=8,p=5$<salt>$<hash>`).
///
/// Hashing is slow and takes 128·r·N bytes (16 MiB at the defaults) by design, so it runs on its own
/// threads, never on an event loop, and at most `maxConcurrent` hashes run at once: a login flood queues
/// instead of exhausting memory.
public final class PasswordHasher: Sendable {
    /// scrypt cost parameters.
    public struct Parameters: Sendable, Equatable {
        public var logN: Int
        public var r: Int
        public var p: Int

        /// OWASP's recommendation: N=2^14 (16 MiB), r=8, p=5.
        public static let owasp = Parameters(logN: 14, r: 8, p: 5)

        public init(logN: Int, r: Int, p: Int) {
            self.logN = logN
            self.r = r
            self.p = p
        }
    }

    public let parameters: Parameters
    private let threads: NIOThreadPool
    /// Hashes running or waiting; past `maxPending` new ones are refused instead of queued.
    private let pending = Atomic<Int>(0)
    private let maxPending: Int

    public init(parameters: Parameters = .owasp, maxConcurrent: Int = 2, maxPending: Int = 64) {
        self.parameters = parameters
        self.maxPending = maxPending
        self.threads = NIOThreadPool(numberOfThreads: max(1, maxConcurrent))
        self.threads.start()
    }

    deinit {
        threads.shutdownGracefully { _ in }
    }

    /// Hashes a password with a fresh 16-byte salt.
    public func hash(_ password: String) async throws -> String {
        let parameters = self.parameters
        return try await limited { try await self.threads.runIfActive {
            let salt = Crypto.randomBytes(16)
            guard let key = Self.derive(password, salt: salt, parameters: parameters) else {
                throw PasswordHashError.unsupportedParameters
            }
            return "$scrypt$ln=\(parameters.logN),r=\(parameters.r),p=\(parameters.p)$\(Base64.encode(salt, padded: false))$\(Base64.encode(key, padded: false))"
        } }
    }

    /// Runs `body` unless too many hashes are already waiting (then 503: try again shortly).
    private func limited<T>(_ body: () async throws -> T) async throws -> T {
        guard pending.wrappingAdd(1, ordering: .relaxed).newValue <= maxPending else {
            pending.wrappingSubtract(1, ordering: .relaxed)
            throw PasswordHashError.busy
        }
        defer { pending.wrappingSubtract(1, ordering: .relaxed) }
        return try await body()
    }

    /// Checks a password against a stored PHC string. False for a malformed string.
    /// A hash that is not one (an account without a password, such as a guest's) takes as long to refuse
    /// as a wrong password, so the time of the answer does not tell such accounts apart.
    public func verify(_ password: String, against phc: String) async throws -> Bool {
        let dummy = self.parameters
        return try await limited { try await self.threads.runIfActive {
            let parts = phc.split(separator: "$", omittingEmptySubsequences: false)
            guard parts.count == 5, parts[0].isEmpty, parts[1] == "scrypt",
                  let parameters = Self.parseParameters(parts[2]),
                  let salt = Base64.decode(parts[3]), let expected = Base64.decode(parts[4]), expected.count >= 16
            else {
                _ = Self.derive(password, salt: Array(repeating: 0, count: 16), parameters: dummy)
                return false
            }
            guard let key = Self.derive(password, salt: salt, parameters: parameters, length: expected.count) else { return false }
            return Crypto.constantTimeEqual(key, expected)
        } }
    }

    /// A hash of nothing in particular, verified when a username is unknown so that the answer takes as long as a real check.
    public func dummyVerify(_ password: String) async throws {
        let parameters = self.parameters
        _ = try await limited { try await self.threads.runIfActive {
            Self.derive(password, salt: Array(repeating: 0, count: 16), parameters: parameters)
        } }
    }

    private static func derive(_ password: String, salt: [UInt8], parameters: Parameters, length: Int = 32) -> [UInt8]? {
        guard (1...20).contains(parameters.logN), (1...32).contains(parameters.r), (1...16).contains(parameters.p) else { return nil }
        return Crypto.scrypt(
            password: Array(password.utf8), salt: salt, n: UInt64(1) << UInt64(parameters.logN),
            r: UInt64(parameters.r), p: UInt64(parameters.p), length: length
        )
    }

    private static func parseParameters(_ text: Substring) -> Parameters? {
        var values: [String: Int] = [:]
        for pair in text.split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, let v = Int(kv[1]) else { return nil }
            values[String(kv[0])] = v
        }
        guard let ln = values["ln"], let r = values["r"], let p = values["p"] else { return nil }
        return Parameters(logN: ln, r: r, p: p)
    }
}

enum PasswordHashError: Error {
    case unsupportedParameters
    /// Too many hashes waiting.
    case busy
}
