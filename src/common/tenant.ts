/** Tenant ids: lowercase letters, digits, "_" and "-", at most 63; they appear in NATS subjects (docs/identity.md). */
export const TENANT_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** The problem with a malformed tenant id, worded for "<field>: <problem>" messages. */
export const TENANT_PROBLEM = `must match ${TENANT_PATTERN.source}`;
