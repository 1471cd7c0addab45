/** Explicit limits on what a caller may send (both transports). */
export interface LimitOptions {
  /** Largest request or response message, bytes. @default 4194304 (4 MiB) */
  maxMessageBytes: number;
  /** Longest deadline a call may have; longer or missing deadlines are capped to this. @default 30000 */
  maxDeadlineMs: number;
  /** Concurrent HTTP/2 streams per connection. @default 256 */
  maxConcurrentStreams: number;
  /** Largest total size of request headers / metadata, bytes. @default 16384 */
  maxHeaderBytes: number;
  /** Most request header fields. @default 64 */
  maxHeaderCount: number;
  /**
   * Open connections, both ports together; more are reset at accept, before TLS. 0 derives it from
   * the descriptor soft limit (80% of what a reserve of 64 leaves; 10000 when unlimited). @default 0
   */
  maxConnections: number;
  /** Open connections from one remote address, both ports together; more are reset at accept. @default 256 */
  maxConnectionsPerIp: number;
  /** A TLS handshake (both ports) must finish within this. @default 10000 */
  tlsHandshakeTimeoutMs: number;
  /**
   * From accept (after TLS) until the first request: the HTTP/1.1 headers or the HTTP/2 preface and
   * first stream; also each later HTTP/1.1 request's headers. @default 10000
   */
  headersTimeoutMs: number;
  /** A request must have sent its whole body within this (HTTP/1.1 request, HTTP/2 stream). @default 30000 */
  requestTimeoutMs: number;
  /** An HTTP/1.1 keep-alive connection with no request for this long is closed. @default 5000 */
  keepAliveTimeoutMs: number;
  /** An HTTP/2 connection with no open stream for this long is closed (GOAWAY), both ports. @default 300000 */
  sessionIdleTimeoutMs: number;
  /** gRPC port: the server pings each connection this often to find dead peers. @default 30000 */
  keepalivePingIntervalMs: number;
  /** A PING unanswered for this long means a dead or wedged connection: destroyed, both ports. @default 5000 */
  pingTimeoutMs: number;
  /** gRPC port: connections older than this are drained (GOAWAY, `requestTimeoutMs` of grace); 0 = never. @default 0 */
  maxConnectionAgeMs: number;
}
