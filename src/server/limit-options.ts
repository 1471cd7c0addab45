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
}
