/** Registry liveness: status derives from heartbeat age. */
export interface RegistryOptions {
  /** Heartbeat age up to which an agent is HEALTHY. @default 15000 */
  heartbeatTtlMs: number;
  /** Heartbeat age from which an agent is a ZOMBIE (between the two it is STALE). @default 60000 */
  zombieAfterMs: number;
  /** Heartbeat age from which a zombie is removed. @default 600000 */
  reapAfterMs: number;
  /** How often statuses are re-derived and zombies reaped. @default 1000 */
  sweepIntervalMs: number;
  /** Heartbeats are coalesced in memory and written in one transaction this often. @default 1000 */
  heartbeatFlushMs: number;
  /** Largest encoded agent record (labels, capabilities, ...), bytes. @default 65536 */
  maxAgentBytes: number;
}
