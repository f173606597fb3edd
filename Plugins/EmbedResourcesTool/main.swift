// The build-time tool behind the EmbedResources plugin: writes a Swift file holding the text of
// the given files as string literals.
//
//   EmbedResourcesTool migrations OUTPUT DIALECT=DIR ...    extension MigrationSet { sqlite, postgres }
//   EmbedResourcesTool openapi OUTPUT FILE                   enum OpenAPIDocument { yaml }
//   EmbedResourcesTool web OUTPUT DIR                        enum EmbeddedWeb { files } (every file under DIR)
//
// Each text is embedded with its trailing newlines removed (the migration checksums recorded in
// databases are computed over exactly that text). The output depends only on the files' names
// and contents, never on where they are, so builds in different directories produce the same code.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    var line = "EmbedResourcesTool: \(message)\n"
    line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    exit(1)
}

func read(_ path: String) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { fail("cannot read \(path)") }
    guard var text = String(data: data, encoding: .utf8) else { fail("\(path) is not UTF-8") }
    while text.hasSuffix("\n") { text.removeLast() }
    return text
}

/// A Swift string literal with exactly the characters of `text`.
func literal(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

func write(_ text: String, to path: String) {
    let data = Data(text.utf8)
    // Unchanged output keeps its timestamp, so nothing downstream recompiles.
    if FileManager.default.contents(atPath: path) == data { return }
    do { try data.write(to: URL(fileURLWithPath: path)) } catch { fail("cannot write \(path): \(error)") }
}

struct Migration {
    var version: Int
    var name: String
    var sql: String
}

/// The `*.sql` files of `dir`, which must be named V<version>__<description>.sql as Flyway names them.
func migrations(in dir: String) -> [Migration] {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { fail("cannot list \(dir)") }
    var found: [Migration] = []
    for name in names where name.hasSuffix(".sql") {
        let parts = name.hasPrefix("V") ? name.dropFirst().dropLast(4).split(separator: "__", maxSplits: 1, omittingEmptySubsequences: false) : []
        guard parts.count == 2, let version = Int(parts[0]), !parts[1].isEmpty,
              parts[1].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") })
        else { fail("bad migration file name: \(dir)/\(name) (expected V<n>__<name>.sql)") }
        if found.contains(where: { $0.version == version }) { fail("two migrations in \(dir) have version \(version)") }
        found.append(Migration(version: version, name: name, sql: read(dir + "/" + name)))
    }
    return found.sorted { $0.version < $1.version }
}

let args = Array(CommandLine.arguments.dropFirst())
guard args.count >= 2 else { fail("usage: migrations OUTPUT DIALECT=DIR... | openapi OUTPUT FILE | web OUTPUT DIR") }
let output = args[1]

switch args[0] {
case "migrations":
    var byDialect: [String: [Migration]] = ["sqlite": [], "postgres": []]
    for arg in args.dropFirst(2) {
        guard let eq = arg.firstIndex(of: "=") else { fail("expected DIALECT=DIR, got \(arg)") }
        let dialect = String(arg[..<eq]), dir = String(arg[arg.index(after: eq)...])
        guard byDialect[dialect] != nil else { fail("unknown dialect \(dialect)") }
        byDialect[dialect] = migrations(in: dir)
    }
    var lines = ["// Generated at build time by the EmbedResources plugin from migrations/.", "", "extension MigrationSet {"]
    for dialect in ["sqlite", "postgres"] {
        lines.append("    /// The \(dialect) migrations, in version order.")
        lines.append("    public static let \(dialect) = MigrationSet(dialect: \"\(dialect)\", migrations: [")
        for m in byDialect[dialect]! {
            lines.append("        Migration(version: \(m.version), fileName: \(literal(m.name)), sql: \(literal(m.sql))),")
        }
        lines.append("    ])")
    }
    lines.append("}")
    write(lines.joined(separator: "\n") + "\n", to: output)
case "openapi":
    guard args.count == 3 else { fail("usage: openapi OUTPUT FILE") }
    let text = """
        // Generated at build time by the EmbedResources plugin from openapi.yaml.

        /// The API description served at `GET /openapi.yaml`.
        enum OpenAPIDocument {
            static let yaml = \(literal(read(args[2])))
        }

        """
    write(text, to: output)
case "web":
    guard args.count == 3 else { fail("usage: web OUTPUT DIR") }
    let root = args[2]
    /// Files under `dir` (relative to `root`), skipping hidden ones.
    func files(_ dir: String) -> [String] {
        let full = dir.isEmpty ? root : root + "/" + dir
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: full) else { return [] }
        return names.filter { !$0.hasPrefix(".") }.flatMap { name -> [String] in
            let path = dir.isEmpty ? name : dir + "/" + name
            var isDirectory = false
            _ = FileManager.default.fileExists(atPath: root + "/" + path, isDirectory: &isDirectory)
            return isDirectory ? files(path) : [path]
        }
    }
    let paths = files("")
    var lines = [
        "// Generated at build time by the EmbedResources plugin from Sources/Service/Web.", "",
        "/// Every file under Sources/Service/Web by its path there (`console/index.html`), as text.",
        "enum EmbeddedWeb {", "    static let files: [String: String] = [",
    ]
    for path in paths.sorted() {
        guard let data = FileManager.default.contents(atPath: root + "/" + path), let text = String(data: data, encoding: .utf8) else {
            fail("\(root)/\(path) is not UTF-8 text (web assets are text: HTML, CSS, JavaScript, SVG)")
        }
        lines.append("        \(literal(path)): \(literal(text)),")
    }
    lines.append(paths.isEmpty ? "    :]" : "    ]")
    lines.append("}")
    write(lines.joined(separator: "\n") + "\n", to: output)
default:
    fail("unknown mode \(args[0])")
}
