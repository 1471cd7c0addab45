/**
 * Edge ids (events.edgeId; a kernel's id in its federation descriptor): tokens of NATS subjects and stream
 * names. JetStream domains and the bus's stream names follow the same rule.
 */
export const EDGE_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
