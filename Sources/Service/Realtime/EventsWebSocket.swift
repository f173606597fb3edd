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

/// The events of one `/ws` connection, handled in order by a task that ends when the queue is empty.
final class EventQueue: Sendable {
    enum Work: Sendable {
        case authenticate(String)
        case event(String)
    }

    private struct State {
        var pending: [Work] = []
        var draining = false
        var paused = false
        var gone = false
    }

    let client: RealtimeClient
    let events: WebSocketController
    private let socket: WebSocketSocket
    private let logger: Logger
    private let state = Mutex(State())
    /// Events waiting beyond which the socket is not read until they are handled.
    static let pauseAt = 16
    static let resumeAt = 4

    init(client: RealtimeClient, socket: WebSocketSocket, events: WebSocketController, logger: Logger) {
        self.client = client
        self.socket = socket
        self.events = events
        self.logger = logger
    }

    func enqueue(_ work: Work) {
        let (start, pause) = state.withLock { s -> (Bool, Bool) in
            guard !s.gone else { return (false, false) }
            s.pending.append(work)
            let pause = !s.paused && s.pending.count >= Self.pauseAt
            if pause { s.paused = true }
            if s.draining { return (false, pause) }
            s.draining = true
            return (true, pause)
        }
        if pause { socket.setReading(false) }
        if start { Task { await self.drain() } }
    }

    private func drain() async {
        while true {
            let (next, resume) = state.withLock { s -> (Work?, Bool) in
                guard !s.gone, !s.pending.isEmpty else {
                    s.draining = false
                    return (nil, false)
                }
                let work = s.pending.removeFirst()
                let resume = s.paused && s.pending.count <= Self.resumeAt
                if resume { s.paused = false }
                return (work, resume)
            }
            if resume { socket.setReading(true) }
            switch next {
            case nil: return
            case .authenticate(let header)?: await events.authenticate(client, header: header, logger: logger)
            case .event(let text)?: await events.receive(text: text, client: client, logger: logger)
            }
        }
    }

    func disconnected() {
        let first = state.withLock { s -> Bool in
            defer { s.gone = true }
            s.pending.removeAll()
            return !s.gone
        }
        guard first else { return }
        events.disconnected(client)
    }
}
