import HTTPTypes
import Logging
import NIOCore
import Synchronization

/// `/ws` on an upgraded connection: each text message is a JSON event of the realtime protocol. Events are
/// handled in order by a task that exists only while there is work; reading pauses while events pile up.
final class EventsWebSocket: WebSocketApplication {
    private let connection: EventQueue

    init(socket: WebSocketSocket, events: WebSocketController, headers: HTTPFields, clientIP: String, logger: Logger) {
        let client = RealtimeClient(maxQueued: events.maxQueued, clientIP: clientIP) { item, client in
            switch item {
            case .text(let frame):
                socket.send(frame.json, written: { client.didSend() })
            case .close(let code, let reason):
                socket.close(code: UInt16(code), reason: reason)
            }
        }
        connection = EventQueue(client: client, socket: socket, events: events, logger: logger)
        events.hub.track(client)
        if let header = headers[.authorization] { connection.enqueue(.authenticate(header)) }
    }

    func received(text: String) {
        connection.enqueue(.event(text))
    }

    func received(binary: ByteBuffer) {
        connection.events.refuseBinary(connection.client)
    }

    func closed() {
        connection.disconnected()
    }
}

/// The events of one `/ws` connection, handled in order (see `InboundQueue`).
final class EventQueue: Sendable {
    enum Work: Sendable {
        case authenticate(String)
        case event(String)
    }

    let client: RealtimeClient
    let events: WebSocketController
    private let socket: WebSocketSocket
    private let logger: Logger
    private let inbound = InboundQueue<Work>()

    init(client: RealtimeClient, socket: WebSocketSocket, events: WebSocketController, logger: Logger) {
        self.client = client
        self.socket = socket
        self.events = events
        self.logger = logger
    }

    func enqueue(_ work: Work) {
        let (client, events, logger, socket) = (client, events, logger, socket)
        inbound.push(work, handle: { work in
            switch work {
            case .authenticate(let header): await events.authenticate(client, header: header, logger: logger)
            case .event(let text): await events.receive(text: text, client: client, logger: logger)
            }
        }, setReading: { socket.setReading($0) })
    }

    func disconnected() {
        guard inbound.close() else { return }
        events.disconnected(client)
    }
}
