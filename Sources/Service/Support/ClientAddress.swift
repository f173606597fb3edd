#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The client's address, written one way, and the bucket its limits are counted in.
enum ClientAddress {
    /// The peer's address, or behind a trusted proxy the right-most `X-Forwarded-For` entry (the one the
    /// proxy added; entries left of it came from the client), normalised. An entry that is not an
    /// address is kept as written (up to 64 bytes); none at all leaves the peer.
    static func resolve(peer: String, forwardedFor: String?, trustProxy: Bool) -> String {
        if trustProxy, let last = forwardedFor?.split(separator: ",").last {
            let entry = String(last).trimmingWhitespace()
            if !entry.isEmpty, entry.utf8.count <= 64 { return normalized(Substring(entry)) ?? entry }
        }
        // The socket's own IPv4 address is written one way already: no parsing on every request.
        return peer.contains(":") ? normalized(Substring(peer)) ?? peer : peer
    }

    /// One spelling per address: IPv4 in dotted decimal (also when written IPv4-mapped, `::ffff:a.b.c.d`),
    /// IPv6 compressed in lower case, without brackets or a port. Nil when `text` is not an address.
    static func normalized(_ text: Substring) -> String? {
        var host = text
        if host.hasPrefix("["), let close = host.firstIndex(of: "]") {
            host = host[host.index(after: host.startIndex)..<close]  // [v6] or [v6]:port
        } else if host.firstIndex(of: ":") == host.lastIndex(of: ":"), let colon = host.firstIndex(of: ":") {
            host = host[..<colon]  // v4:port
        }
        var v4 = in_addr()
        if inet_pton(AF_INET, String(host), &v4) == 1 { return format(AF_INET, &v4, length: INET_ADDRSTRLEN) }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, String(host), &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            return bytes[12...].map(String.init).joined(separator: ".")
        }
        return format(AF_INET6, &v6, length: INET6_ADDRSTRLEN)
    }

    /// What per-address limits count: the address, or for IPv6 its /64 (one host usually holds a whole
    /// /64, so counting single addresses would let it make up new ones at will).
    static func bucket(_ address: String) -> String {
        guard address.contains(":") else { return address }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, address, &v6) == 1 else { return address }
        withUnsafeMutableBytes(of: &v6) { bytes in
            for i in 8..<16 { bytes[i] = 0 }
        }
        return (format(AF_INET6, &v6, length: INET6_ADDRSTRLEN) ?? address) + "/64"
    }

    private static func format<T>(_ family: Int32, _ address: inout T, length: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(length))
        let written = withUnsafeBytes(of: &address) { inet_ntop(family, $0.baseAddress, &buffer, socklen_t(length)) }
        guard written != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
