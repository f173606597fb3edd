import COpenSSL

/// Thin wrappers over the system libcrypto.
enum Crypto {
    /// Cryptographically secure random bytes (OpenSSL RAND_bytes).
    static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let rc = bytes.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
        // RAND_bytes fails only when the system entropy source is broken; nothing safe can continue then.
        precondition(rc == 1, "RAND_bytes failed")
        return bytes
    }

    /// HMAC-SHA256 of `data` under `key`.
    static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        let result = key.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in
                out.withUnsafeMutableBufferPointer { o in
                    HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress, d.count, o.baseAddress, &length)
                }
            }
        }
        precondition(result != nil && length == 32, "HMAC-SHA256 failed")
        return out
    }

    /// SHA-256 digest.
    static func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        _ = data.withUnsafeBufferPointer { d in
            out.withUnsafeMutableBufferPointer { o in SHA256(d.baseAddress, d.count, o.baseAddress) }
        }
        return out
    }

    /// SHA-1 digest (only for the WebSocket handshake's accept key, RFC 6455 §4.2.2).
    static func sha1(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 20)
        _ = data.withUnsafeBufferPointer { d in
            out.withUnsafeMutableBufferPointer { o in SHA1(d.baseAddress, d.count, o.baseAddress) }
        }
        return out
    }

    /// scrypt key derivation (RFC 7914). Returns nil when OpenSSL rejects the parameters.
    static func scrypt(password: [UInt8], salt: [UInt8], n: UInt64, r: UInt64, p: UInt64, length: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: length)
        // 128·r·N bytes for V plus 128·r·p for B, with headroom.
        let maxMemory = 128 * r * n + 128 * r * p + 1024 * 1024
        let rc = password.withUnsafeBufferPointer { pw in
            salt.withUnsafeBufferPointer { s in
                out.withUnsafeMutableBufferPointer { o in
                    EVP_PBE_scrypt(pw.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) }, pw.count,
                                   s.baseAddress, s.count, n, r, p, maxMemory, o.baseAddress, length)
                }
            }
        }
        return rc == 1 ? out : nil
    }

    /// Compares two byte strings in time independent of where they differ.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return a.withUnsafeBufferPointer { x in b.withUnsafeBufferPointer { y in CRYPTO_memcmp(x.baseAddress, y.baseAddress, a.count) == 0 } }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Base64 (standard and URL-safe, unpadded) without Foundation.
enum Base64 {
    private static let standard = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let url = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    static func encode(_ bytes: [UInt8], urlSafe: Bool = false, padded: Bool = true) -> String {
        let table = urlSafe ? url : standard
        var out = [UInt8]()
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 2 < bytes.count {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)], table[Int(v >> 6 & 63)], table[Int(v & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let v = UInt32(bytes[i]) << 16
            out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)]]
            if padded { out += [61, 61] }
        } else if rest == 2 {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)], table[Int(v >> 6 & 63)]]
            if padded { out += [61] }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func urlEncode(_ bytes: [UInt8]) -> String { encode(bytes, urlSafe: true, padded: false) }

    /// Decodes base64url exactly as RFC 7515 §2 writes it: the URL-safe alphabet, no padding, no other
    /// characters, and zero bits after the last full byte. Every byte string has one such encoding, so a
    /// token that decodes here is in its canonical form. Nil otherwise.
    static func decodeURLStrict(_ text: some StringProtocol) -> [UInt8]? {
        var values: [UInt8] = []
        values.reserveCapacity(text.utf8.count)
        for c in text.utf8 {
            switch c {
            case 65...90: values.append(c - 65)
            case 97...122: values.append(c - 71)
            case 48...57: values.append(c + 4)
            case 45: values.append(62)
            case 95: values.append(63)
            default: return nil
            }
        }
        let rest = values.count % 4
        if rest == 1 { return nil }
        // The unused low bits of the last character must be zero (RFC 4648 §3.5).
        if rest == 2, values[values.count - 1] & 0x0F != 0 { return nil }
        if rest == 3, values[values.count - 1] & 0x03 != 0 { return nil }
        return decode(text)
    }

    /// Decodes standard or URL-safe base64, padded or not. Nil on any invalid character or length.
    static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var values: [UInt8] = []
        values.reserveCapacity(text.utf8.count)
        var sawPadding = false
        for c in text.utf8 {
            let v: UInt8
            switch c {
            case 65...90: v = c - 65
            case 97...122: v = c - 71
            case 48...57: v = c + 4
            case 43, 45: v = 62
            case 47, 95: v = 63
            case 61: sawPadding = true; continue
            default: return nil
            }
            if sawPadding { return nil }
            values.append(v)
        }
        if values.count % 4 == 1 { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(values.count * 3 / 4)
        var i = 0
        while i < values.count {
            let chunk = values[i..<min(i + 4, values.count)]
            var acc: UInt32 = 0
            for (k, v) in chunk.enumerated() { acc |= UInt32(v) << (18 - 6 * UInt32(k)) }
            out.append(UInt8(acc >> 16 & 0xFF))
            if chunk.count > 2 { out.append(UInt8(acc >> 8 & 0xFF)) }
            if chunk.count > 3 { out.append(UInt8(acc & 0xFF)) }
            i += 4
        }
        return out
    }
}

/// Random secrets for configuration (the generated JWT key).
public enum SecretGenerator {
    /// `bytes` random bytes as lowercase hex.
    public static func hex(bytes: Int) -> String { Crypto.hex(Crypto.randomBytes(bytes)) }
}

/// SHA-256 over bytes that arrive a piece at a time (an upload).
final class SHA256Stream {
    private let context: OpaquePointer

    init() {
        guard let context = EVP_MD_CTX_new() else { preconditionFailure("EVP_MD_CTX_new failed: out of memory") }
        self.context = context
        precondition(EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1, "SHA-256 is not available")
    }

    deinit { EVP_MD_CTX_free(context) }

    func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { _ = EVP_DigestUpdate(context, $0.baseAddress, $0.count) }
    }

    /// The digest as lowercase hex; the stream is done after this.
    func finish() -> String {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        _ = out.withUnsafeMutableBufferPointer { EVP_DigestFinal_ex(context, $0.baseAddress, &length) }
        return Crypto.hex(out)
    }
}
