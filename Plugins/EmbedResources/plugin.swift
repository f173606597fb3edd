import Foundation
import PackagePlugin

/// Compiles the files the repository keeps at its top level into the targets that need them at run
/// time, so the binary runs without the source tree (from a .deb): the SQL migrations into Storage
/// (`MigrationSet.sqlite`, `.postgres`), `openapi.yaml` into Service (`OpenAPIDocument.yaml`), and the
/// web console and widget under `Sources/Service/Web` into Service (`EmbeddedWeb.files`).
///
/// The generated Swift goes to the build directory, never to git. The tool reruns when an input
/// changes or the list of inputs does (a migration added or removed), so a plain `swift build` is
/// always current.
@main
struct EmbedResources: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let tool = try context.tool(named: "EmbedResourcesTool").url
        let output: URL
        var inputs: [URL] = []
        var arguments: [String]
        var commands: [Command] = []
        switch target.name {
        case "Storage":
            output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedMigrations.swift")
            arguments = ["migrations", output.path]
            for dialect in ["sqlite", "postgres"] {
                // SwiftPM asks this plugin again only when the package's layout changes; the
                // link Plugins/EmbedResources/migrations -> ../../migrations makes a migration
                // added, removed or renamed such a change. Edits are seen through the inputs.
                let dir = root.appending(path: "migrations/\(dialect)")
                inputs += try FileManager.default.contentsOfDirectory(atPath: dir.path)
                    .filter { $0.hasSuffix(".sql") }.sorted().map { dir.appending(path: $0) }
                arguments.append("\(dialect)=\(dir.path)")
            }
        case "Service":
            output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedOpenAPI.swift")
            let spec = root.appending(path: "openapi.yaml")
            inputs.append(spec)
            arguments = ["openapi", output.path, spec.path]
            // The console and widget (Sources/Service/Web, excluded from the target's sources). The link
            // Plugins/EmbedResources/web -> ../../Sources/Service/Web makes a file added or removed there a
            // layout change, as for the migrations.
            let web = root.appending(path: "Sources/Service/Web")
            let webOutput = context.pluginWorkDirectoryURL.appending(path: "EmbeddedWeb.swift")
            var webInputs: [URL] = []
            if let files = FileManager.default.enumerator(atPath: web.path) {
                while let path = files.nextObject() as? String {
                    var isDirectory: ObjCBool = false
                    if FileManager.default.fileExists(atPath: web.appending(path: path).path, isDirectory: &isDirectory), !isDirectory.boolValue,
                       !path.split(separator: "/").contains(where: { $0.hasPrefix(".") }) {
                        webInputs.append(web.appending(path: path))
                    }
                }
            }
            commands.append(
                .buildCommand(
                    displayName: "Embedding \(webInputs.count) web file(s) in Service",
                    executable: tool, arguments: ["web", webOutput.path, web.path], inputFiles: webInputs.sorted { $0.path < $1.path },
                    outputFiles: [webOutput]
                )
            )
        default:
            throw EmbedError("EmbedResources has nothing to embed in target \(target.name)")
        }
        return [
            .buildCommand(
                displayName: "Embedding \(inputs.count) file(s) in \(target.name)",
                executable: tool, arguments: arguments, inputFiles: inputs, outputFiles: [output]
            ),
        ] + commands
    }
}

struct EmbedError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
