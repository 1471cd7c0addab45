import type { AgentLoad, Capability } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { TENANT_PATTERN, TENANT_PROBLEM, compileObjectSchema, invalidArgument } from "../common/index.js";

const CAPABILITY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;
const ENDPOINT_SCHEMES = new Set(["http:", "https:", "grpc:", "grpcs:"]);
// No control characters in names a human reads in logs and UIs.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Throws INVALID_ARGUMENT naming `field`. */
export function invalid(field: string, problem: string): never {
  throw invalidArgument(field, problem);
}

/** Checks a tenant id. */
export function checkTenant(field: string, tenant: string): void {
  if (tenant === "") invalid(field, "is required");
  if (!TENANT_PATTERN.test(tenant)) invalid(field, `${TENANT_PROBLEM} (got ${JSON.stringify(tenant.slice(0, 70))})`);
}

/** Checks an agent id as issued by the kernel (UUID). */
export function checkAgentId(field: string, id: string): void {
  if (id === "") invalid(field, "is required");
  if (!/^[0-9a-f-]{36}$/.test(id)) invalid(field, "is not an agent id");
}

/** Checks a RegisterAgent idempotency key: 1..128 printable ASCII characters, no spaces. */
export function checkIdempotencyKey(field: string, key: string): void {
  if (key.length > 128) invalid(field, `must be at most 128 characters (got ${key.length})`);
  if (!/^[\x21-\x7e]+$/.test(key)) invalid(field, "must be printable ASCII without spaces");
}

/** Checks a required short text field. */
export function checkText(field: string, value: string, max: number, required = true): void {
  if (value === "") {
    if (required) invalid(field, "is required");
    return;
  }
  if (value.length > max) invalid(field, `must be at most ${max} characters (got ${value.length})`);
  if (CONTROL.test(value)) invalid(field, "must not contain control characters");
}

/** Checks an endpoint: "host:port" or "scheme://host:port" with scheme http, https, grpc or grpcs. */
export function checkEndpoint(field: string, endpoint: string): void {
  if (endpoint === "") invalid(field, "is required");
  if (endpoint.length > 512) invalid(field, "must be at most 512 characters");
  let url: URL;
  try {
    url = new URL(endpoint.includes("://") ? endpoint : `grpc://${endpoint}`);
  } catch {
    return invalid(field, `is not "host:port" or "scheme://host:port" (got ${JSON.stringify(endpoint.slice(0, 80))})`);
  }
  if (!ENDPOINT_SCHEMES.has(url.protocol))
    invalid(field, `scheme must be http, https, grpc or grpcs (got ${url.protocol.slice(0, -1)})`);
  if (url.hostname === "") invalid(field, "has no host");
  if (url.username || url.password) invalid(field, "must not carry credentials");
  const port = Number(url.port);
  if (url.port === "" && (url.protocol === "grpc:" || url.protocol === "grpcs:")) invalid(field, "needs a port");
  if (url.port !== "" && (!Number.isInteger(port) || port < 1 || port > 65535)) invalid(field, "port must be 1..65535");
}

/** Checks capabilities: unique names, bounded attributes, input and output schemas that compile. */
export function checkCapabilities(
  field: string,
  capabilities: readonly (Pick<Capability, "name" | "version" | "attributes"> &
    Partial<Pick<Capability, "inputSchema" | "outputSchema">>)[],
): void {
  if (capabilities.length > 64) invalid(field, `at most 64 capabilities (got ${capabilities.length})`);
  const names = new Set<string>();
  capabilities.forEach((c, i) => {
    const f = `${field}[${i}]`;
    checkCapabilityName(`${f}.name`, c.name);
    if (names.has(c.name)) invalid(`${f}.name`, `duplicate capability "${c.name}"`);
    names.add(c.name);
    checkText(`${f}.version`, c.version, 64, false);
    checkMap(`${f}.attributes`, c.attributes, 32, 1024);
    if (c.inputSchema) compileObjectSchema(`${f}.input_schema`, c.inputSchema);
    if (c.outputSchema) compileObjectSchema(`${f}.output_schema`, c.outputSchema);
  });
}

/** Checks a capability name. */
export function checkCapabilityName(field: string, name: string): void {
  if (!CAPABILITY_NAME.test(name))
    invalid(field, `must match ${CAPABILITY_NAME} (got ${JSON.stringify(name.slice(0, 140))})`);
}

/** Checks a string map (labels, attributes). */
export function checkMap(field: string, map: Record<string, string>, maxEntries: number, maxValue: number): void {
  const keys = Object.keys(map);
  if (keys.length > maxEntries) invalid(field, `at most ${maxEntries} entries (got ${keys.length})`);
  for (const key of keys) {
    if (!LABEL_KEY.test(key)) invalid(`${field}[${JSON.stringify(key.slice(0, 70))}]`, `key must match ${LABEL_KEY}`);
    if ((map[key] ?? "").length > maxValue)
      invalid(`${field}[${JSON.stringify(key)}]`, `value must be at most ${maxValue} characters`);
  }
}

/** Checks reported load figures. */
export function checkLoad(field: string, load: AgentLoad | undefined): void {
  if (!load) return;
  const ratio = (name: string, v: number) => {
    if (!Number.isFinite(v) || v < 0 || v > 1) invalid(`${field}.${name}`, `must be between 0 and 1 (got ${v})`);
  };
  const nonNegative = (name: string, v: number) => {
    if (!Number.isFinite(v) || v < 0) invalid(`${field}.${name}`, `must be a finite number >= 0 (got ${v})`);
  };
  ratio("cpu", load.cpu);
  ratio("error_rate", load.errorRate);
  nonNegative("latency_p50_ms", load.latencyP50Ms);
  nonNegative("latency_p99_ms", load.latencyP99Ms);
}
