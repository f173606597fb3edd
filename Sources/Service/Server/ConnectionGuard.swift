import NIOCore

/// First handler of every connection: the timeouts of the HTTP/1.1 phase, seen at the byte level.
///
/// A request head must be complete within `headerTimeout` of the connection opening (a connection that
/// sends nothing is closed then too) or, on a keep-alive connection, of the first byte of the next
/// request; a keep-alive connection with nothing in progress is closed after `idleTimeout`, and so is a
/// request body that stops arriving for `idleTimeout` (the HTTP handler answers it 408). Once the
/// connection is upgraded to a WebSocket the guard removes itself.
final class ConnectionGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private enum State {
        /// Waiting for a complete head; `sawBytes` once part of it arrived.
        case awaitingHead(sawBytes: Bool)
        /// A request's body is arriving: each read moves the deadline.
        case readingBody
        /// A request is being answered: no timer.
        case inRequest
        /// Keep-alive, between requests.
        case idle
        case done
    }

    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private let hstsMaxAge: Int?
    private var state = State.awaitingHead(sawBytes: false)
    private var timer: Scheduled<Void>?
    private var timerFiresAt: NIODeadline?
    private var deadline: NIODeadline?
    private var context: ChannelHandlerContext?
    /// Called when a request body stops arriving for `idleTimeout` (set once by the HTTP handler).
    var bodyStalled: (() -> Void)?
    /// The length of the current request's first line, as far as it has arrived: a head too large for
    /// the parser is too large in its target (414) when that line is long, else in its header fields (431).
    private(set) var requestLineBytes = 0
    private var requestLineComplete = false
    /// The first bytes of the current request's first line, enough to tell an unknown method (a token)
    /// from a line that is not HTTP at all.
    private var requestLineStart: [UInt8] = []

    init(headerTimeout: TimeAmount, idleTimeout: TimeAmount, hstsMaxAge: Int?) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.hstsMaxAge = hstsMaxAge
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        arm(headerTimeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stopTimer()
        self.context = nil
        state = .done
    }

    func channelInactive(context: ChannelHandlerContext) {
        stopTimer()
        state = .done
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .idle:
            // The next request starts: its head gets the header timeout from now.
            state = .awaitingHead(sawBytes: true)
            requestLineBytes = 0
            requestLineComplete = false
            requestLineStart.removeAll(keepingCapacity: true)
            arm(headerTimeout)
        case .awaitingHead(sawBytes: false):
            state = .awaitingHead(sawBytes: true)
        case .readingBody:
            arm(idleTimeout)
        case .awaitingHead, .inRequest, .done:
            break
        }
        if case .awaitingHead = state, !requestLineComplete {
            let bytes = unwrapInboundIn(data).readableBytesView
            if requestLineStart.count < Self.methodBytesKept {
                requestLineStart += bytes.prefix(Self.methodBytesKept - requestLineStart.count)
            }
            if let end = bytes.firstIndex(of: UInt8(ascii: "\n")) {
                requestLineBytes += end - bytes.startIndex
                requestLineComplete = true
            } else {
                requestLineBytes += bytes.count
            }
        }
        context.fireChannelRead(data)
    }

    private static let methodBytesKept = 32

    /// Whether the request line starts with a method name: a token (RFC 9110 §9.1) and a space. One the
    /// parser refused is not implemented here (501); anything else is not HTTP (400).
    var requestStartsWithToken: Bool {
        let method = requestLineStart.prefix(while: Self.isTokenCharacter)
        return !method.isEmpty && requestLineStart.dropFirst(method.count).first == UInt8(ascii: " ")
    }

    /// RFC 9110 §5.6.2 `tchar`.
    private static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        default: "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }

    /// The HTTP handler has a complete head.
    func headReceived() {
        cancel()
        if case .done = state { return }
        state = .inRequest
    }

    /// The request's body is still to come: `bodyStalled` runs if none of it arrives for `idleTimeout`.
    func bodyStarted() {
        guard case .inRequest = state else { return }
        state = .readingBody
        arm(idleTimeout)
    }

    /// The request's body has arrived (or will not be read any more).
    func bodyEnded() {
        guard case .readingBody = state else { return }
        state = .inRequest
        cancel()
    }

    /// The HTTP handler answered and keeps the connection open for another request.
    func awaitNextRequest() {
        if case .done = state { return }
        state = .idle
        arm(idleTimeout)
    }

    /// The connection became a WebSocket: the guard steps out of the way.
    func upgraded() {
        stopTimer()
        state = .done
        if let context { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
    }

    /// Sets the deadline. A request costs no timer scheduling in the steady state: the one timer is
    /// moved only when the new deadline is earlier than when it fires; otherwise, when it fires early,
    /// it schedules itself again for the deadline.
    private func arm(_ timeout: TimeAmount) {
        guard let context else { return }
        let deadline = NIODeadline.now() + timeout
        self.deadline = deadline
        if timer != nil, let firesAt = timerFiresAt, firesAt <= deadline { return }
        timer?.cancel()
        schedule(at: deadline, context: context)
    }

    private func schedule(at deadline: NIODeadline, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timerFiresAt = deadline
        timer = context.eventLoop.scheduleTask(deadline: deadline) { loopBound.value.fired() }
    }

    /// No deadline; the timer, if any, finds none when it fires.
    private func cancel() {
        deadline = nil
    }

    private func stopTimer() {
        timer?.cancel()
        timer = nil
        timerFiresAt = nil
        deadline = nil
    }

    private func fired() {
        timer = nil
        timerFiresAt = nil
        guard let deadline, let context else { return }
        if NIODeadline.now() < deadline {
            schedule(at: deadline, context: context)
        } else {
            self.deadline = nil
            expired()
        }
    }

    private func expired() {
        guard let context else { return }
        switch state {
        case .awaitingHead(sawBytes: true):
            // Part of a head came: say why the connection ends (RFC 9110 §15.5.9), then close.
            let response = ConnectionErrors.raw(ConnectionErrors.headerTimeout, hstsMaxAge: hstsMaxAge)
            state = .done
            let channel = context.channel
            context.writeAndFlush(NIOAny(response)).whenComplete { _ in channel.close(promise: nil) }
        case .awaitingHead(sawBytes: false), .idle:
            state = .done
            context.close(promise: nil)
        case .readingBody:
            state = .inRequest
            bodyStalled?()
        case .inRequest, .done:
            break
        }
    }
}
