import Logging

/// `StreamLogHandler`'s output, with the logger's own metadata rendered only when a line is written.
///
/// `StreamLogHandler` renders its metadata to text each time an entry is set; every request sets its
/// `request_id`, so that text was built for every request while almost none of them log a line.
public struct DeferredMetadataLogHandler: LogHandler {
    private var inner: StreamLogHandler
    public var metadata: Logger.Metadata = [:]

    public init(_ inner: StreamLogHandler) {
        self.inner = inner
    }

    public var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    public var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var event = event
        if !metadata.isEmpty {
            // What the line itself carries wins over the logger's entries, as in `StreamLogHandler`.
            event.metadata = metadata.merging(event.metadata ?? [:]) { _, line in line }
        }
        inner.log(event: event)
    }
}
