#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import Storage

/// `/api/admin/webhooks/…` (role admin): the event webhooks' deliveries, and sending a parked one again.
struct WebhookController {
    let store: any ChatStore
    let webhooks: WebhooksConfig

    func addRoutes(to api: RouterGroup<AuthenticatedContext>) {
        api.get("admin/webhooks/deliveries", use: deliveries)
        api.post("admin/webhooks/deliveries/:webhook/:eventId/redeliver", use: redeliver)
    }

    private func requireAdmin(_ context: AuthenticatedContext) throws {
        guard context.isAdmin else { throw APIError(.forbidden, code: "forbidden", message: "only admins may see webhook deliveries") }
    }

    @Sendable func deliveries(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        let query = try QueryParameters(request, allowed: ["status", "limit"])
        let status = try query.oneOf("status", WebhookDelivery.Status.self) ?? .parked
        let limit = try query.int("limit", default: 50, range: Limits.sessionPageLimit)
        let found = try await store.webhookDeliveries(status: status, limit: limit)
        return JSONResponse.make(.ok, API.WebhookDeliveryList(deliveries: found.map(API.WebhookDeliveryItem.init)), capacity: 256 + 1024 * found.count)
    }

    @Sendable func redeliver(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        let webhook = context.parameters.get("webhook") ?? ""
        let eventId = try context.parameters.uuid("eventId")
        guard webhooks.names.contains(webhook) else { throw APIError.notFound("webhook") }
        guard try await store.redeliverWebhook(webhook: webhook, eventId: eventId, now: Timestamp.now()) else {
            throw APIError.notFound("parked delivery")
        }
        return Response(status: .accepted)
    }
}
