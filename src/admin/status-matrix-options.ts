import {
  ConfigError,
  readBool,
  readInt,
  readSection,
  readString,
  readStringList,
  type RawSection,
  TENANT_PATTERN,
} from "../common/index.js";

/** What a capability does when a dependency fails. */
export type Criticality = "CRITICAL" | "ESSENTIAL" | "BEST_EFFORT";

/** One row of the criticality matrix. */
export interface CapabilitySpec {
  /** CRITICAL blocks (fails closed, kernel not ready); ESSENTIAL and BEST_EFFORT serve on `fallback`. */
  criticality: Criticality;
  /** Dependency names it relies on; a name nobody probes (not configured here) is ignored. */
  dependsOn: string[];
  /** What it does instead while degraded, in operator words (shown in GetStatus and events). */
  fallback: string;
  /**
   * Whether the matrix emits degraded.mode.* events for it. Off for a capability that emits its
   * own (the event bus does, see src/events/event-bus.ts), so no transition is reported twice.
   * @default true
   */
  events: boolean;
  /**
   * Whether this capability being blocked makes the kernel not ready (/readyz 503). A blocked
   * egress guard fails closed call by call; taking the whole kernel out of service for it would
   * also stop registrations and heartbeats, so it reports without gating. @default criticality === "CRITICAL"
   */
  gatesReadiness: boolean;
}

/** The `admin.status` config section. */
export interface StatusMatrixOptions {
  /** The criticality matrix, by capability name; entries merge over DEFAULT_CAPABILITY_MATRIX field by field. */
  capabilities: Record<string, CapabilitySpec>;
  /** Tenant degraded.mode.* events are recorded under. @default "system" */
  systemTenant: string;
  /** How often start() re-probes, so transitions are reported even when nobody asks. @default 5000 */
  intervalMs: number;
}

/**
 * The kernel's criticality matrix (the "Operable in production" issue): registry, audit and
 * egress guard are CRITICAL; routing, event bus, federation and admission (overload shedding)
 * ESSENTIAL with fallbacks; scorecard and tracing BEST_EFFORT. Dependency names match the probes
 * src/kernel/dependency-probes.ts registers.
 */
export const DEFAULT_CAPABILITY_MATRIX: Readonly<Record<string, CapabilitySpec>> = {
  registry: {
    criticality: "CRITICAL",
    dependsOn: ["sqlite"],
    fallback: "none: writes fail with UNAVAILABLE",
    events: true,
    gatesReadiness: true,
  },
  audit: {
    criticality: "CRITICAL",
    dependsOn: ["sqlite"],
    fallback: "none: audited actions fail with UNAVAILABLE",
    events: true,
    gatesReadiness: true,
  },
  "egress-guard": {
    criticality: "CRITICAL",
    dependsOn: ["dge"],
    fallback: "cached verdicts only; uncached calls are blocked (fail closed)",
    events: true,
    gatesReadiness: false,
  },
  identity: {
    criticality: "CRITICAL",
    dependsOn: ["workload-api"],
    fallback: "current SVID and bundles until the SVID expires",
    events: true,
    gatesReadiness: true,
  },
  "rate-limit": {
    criticality: "ESSENTIAL",
    dependsOn: ["redis"],
    fallback: "per-process in-memory limits",
    events: true,
    gatesReadiness: false,
  },
  routing: {
    criticality: "ESSENTIAL",
    dependsOn: ["health-scores"],
    fallback: "round-robin",
    events: true,
    gatesReadiness: false,
  },
  "event-bus": {
    criticality: "ESSENTIAL",
    dependsOn: ["nats-leaf"],
    fallback: "queue-locally (SQLite outbox)",
    events: false,
    gatesReadiness: false,
  },
  federation: {
    criticality: "ESSENTIAL",
    dependsOn: ["hub-link", "federation-links"],
    fallback: "local-only (store-and-forward)",
    events: true,
    gatesReadiness: false,
  },
  admission: {
    criticality: "ESSENTIAL",
    dependsOn: ["overload"],
    fallback: "new calls shed with UNAVAILABLE and a retry hint; health and status still answered",
    events: true,
    gatesReadiness: false,
  },
  scorecard: {
    criticality: "BEST_EFFORT",
    dependsOn: ["scorecard"],
    fallback: "skipped",
    events: true,
    gatesReadiness: false,
  },
  tracing: {
    criticality: "BEST_EFFORT",
    dependsOn: ["trace-exporter"],
    fallback: "spans dropped",
    events: true,
    gatesReadiness: false,
  },
};

/** Default status matrix settings. */
export const DEFAULT_STATUS_MATRIX_OPTIONS: StatusMatrixOptions = {
  capabilities: DEFAULT_CAPABILITY_MATRIX,
  systemTenant: "system",
  intervalMs: 5000,
};

const CRITICALITIES: readonly Criticality[] = ["CRITICAL", "ESSENTIAL", "BEST_EFFORT"];
const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
const SPEC_FIELDS: CapabilitySpec = {
  criticality: "CRITICAL",
  dependsOn: [],
  fallback: "",
  events: true,
  gatesReadiness: true,
};

function resolveSpec(input: unknown, path: string, base: CapabilitySpec | undefined): CapabilitySpec {
  const s: RawSection = readSection(input, path, SPEC_FIELDS);
  if (!base && s.criticality === undefined)
    throw new ConfigError(`${path}.criticality is required for a new capability`);
  const dependsOn = readStringList(s, "dependsOn", path, base?.dependsOn ?? []);
  dependsOn.forEach((d, i) => {
    if (!NAME.test(d)) throw new ConfigError(`${path}.dependsOn[${i}] must match ${NAME} (got ${JSON.stringify(d)})`);
  });
  return {
    criticality: readString(s, "criticality", path, base?.criticality ?? "CRITICAL", {
      oneOf: CRITICALITIES,
    }) as Criticality,
    dependsOn,
    fallback: readString(s, "fallback", path, base?.fallback ?? "none"),
    events: readBool(s, "events", path, base?.events ?? true),
    gatesReadiness: readBool(
      s,
      "gatesReadiness",
      path,
      base?.gatesReadiness ?? (s.criticality ?? base?.criticality ?? "CRITICAL") === "CRITICAL",
    ),
  };
}

/** Validates a partial `admin.status` section and fills defaults; throws ConfigError naming the field. */
export function resolveStatusMatrixOptions(input: unknown = {}, path = "admin.status"): StatusMatrixOptions {
  const s = readSection(input, path, DEFAULT_STATUS_MATRIX_OPTIONS);
  const capabilities: Record<string, CapabilitySpec> = {};
  for (const [name, spec] of Object.entries(DEFAULT_CAPABILITY_MATRIX))
    capabilities[name] = { ...spec, dependsOn: [...spec.dependsOn] };
  const given = s.capabilities ?? {};
  if (typeof given !== "object" || given === null || Array.isArray(given))
    throw new ConfigError(`${path}.capabilities must be an object`);
  for (const [name, spec] of Object.entries(given as Record<string, unknown>)) {
    if (!NAME.test(name)) throw new ConfigError(`${path}.capabilities: ${JSON.stringify(name)} must match ${NAME}`);
    capabilities[name] = resolveSpec(spec, `${path}.capabilities.${name}`, capabilities[name]);
  }
  return {
    capabilities,
    systemTenant: readString(s, "systemTenant", path, DEFAULT_STATUS_MATRIX_OPTIONS.systemTenant, {
      pattern: TENANT_PATTERN,
    }),
    intervalMs: readInt(s, "intervalMs", path, DEFAULT_STATUS_MATRIX_OPTIONS.intervalMs, 100, 3_600_000),
  };
}
