#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import NIOCore
import Prometheus
import Storage

/// `/health`, `/api/health`, `/api/status`, `/api/metrics` and `/openapi.yaml`.
struct HealthController {
    let store: any ChatStore
    let registry: PrometheusCollectorRegistry
    let version: String
    let startedAt: ContinuousClock.Instant
    let startedAtDate: Date

    func addRoutes(to router: Router<ChatRequestContext>) {
        router.get("health", use: alive)
        router.get("openapi.yaml", use: openAPI)
    }

    func addAPIRoutes(to api: RouterGroup<ChatRequestContext>) {
        api.get("health", use: health)
        api.get("status", use: status)
        api.get("metrics", use: metrics)
    }

    var uptimeSeconds: Double {
        let elapsed = ContinuousClock.now - startedAt
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    /// Liveness: the process answers; storage is not touched.
    @Sendable func alive(_ request: Request, context: ChatRequestContext) async throws -> Response {
        JSONResponse.make(.ok, API.Liveness(version: version))
    }

    /// Readiness: storage answers and would accept a write.
    @Sendable func health(_ request: Request, context: ChatRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        switch await store.health() {
        case .up:
            let latency = ContinuousClock.now - started
            let ms = Double(latency.components.attoseconds) / 1e15 + Double(latency.components.seconds) * 1000
            return JSONResponse.make(.ok, API.Health(
                version: version, storage: .init(backend: store.backend, up: true, latencyMs: (ms * 1000).rounded() / 1000)
            ))
        case .down(let reason, let detail):
            context.logger.warning("storage health check failed", metadata: ["reason": .string(reason), "detail": .string(detail)])
            return JSONResponse.make(.serviceUnavailable, API.Health(
                version: version, storage: .init(backend: store.backend, up: false, reason: reason)
            ))
        }
    }

    @Sendable func status(_ request: Request, context: ChatRequestContext) async throws -> Response {
        let stats = try await store.statistics()
        return JSONResponse.make(.ok, API.Status(
            version: version, uptimeSeconds: (uptimeSeconds * 1000).rounded() / 1000, startedAt: startedAtDate,
            backend: store.backend, statistics: stats
        ))
    }

    @Sendable func metrics(_ request: Request, context: ChatRequestContext) async throws -> Response {
        registry.makeGauge(name: "process_uptime_seconds", help: "seconds since start").set(uptimeSeconds)
        var buffer: [UInt8] = []
        buffer.reserveCapacity(16 * 1024)
        registry.emit(into: &buffer)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: buffer))
        )
    }

    @Sendable func openAPI(_ request: Request, context: ChatRequestContext) async throws -> Response {
        Response(
            status: .ok, headers: [.contentType: "application/yaml; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.yaml))
        )
    }
}
