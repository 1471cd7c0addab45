import { ConfigError, readInt, readObject, readSection, readString, readStringList } from "../common/index.js";
import { parseVerifierKey } from "../audit/index.js";

/** One edge the witness follows. */
export interface WitnessEdgeOptions {
  /** The edge's audit log origin. @default "nops.kernel/<edgeId>/audit" */
  origin: string;
  /** Pinned verifier keys of the edge's checkpoint key (current and retired); at least one. */
  keys: string[];
  /** The hub stream that sources the edge's stream. @default "NOPS_EDGE_<EDGEID>" */
  stream: string;
  /** Tenant the edge writes checkpoint events under (its audit.systemTenant). @default "system" */
  tenant: string;
}

/** The `witness` config section of `nops-kernel audit witness`. */
export interface WitnessOptions {
  /** Where the latest checkpoint of each edge is kept (JSON). */
  stateFile: string;
  /** The HTTP endpoint serving held checkpoints. @default { host: "127.0.0.1", port: 8090 } */
  http: { host: string; port: number };
  /** The hub's NATS (JetStream) the witness reads the edges' streams from. */
  nats: { url: string; user: string; pass: string };
  /** How long to wait before reopening an edge's consumer after an error. @default 2000 */
  retryMs: number;
  edges: Record<string, WitnessEdgeOptions>;
}

const EDGE_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** The hub stream name the event bus gives an edge (events.hubStreamName's default). */
export const hubStreamOf = (edgeId: string): string => `NOPS_EDGE_${edgeId.toUpperCase().replace(/-/g, "_")}`;

/** Validates the `witness` section; throws ConfigError naming the field. */
export function resolveWitnessOptions(input: unknown, path = "witness"): WitnessOptions {
  const s = readSection(input, path, { stateFile: "", http: {}, nats: {}, retryMs: 0, edges: {} });
  const http = readSection(s.http, `${path}.http`, { host: "", port: 0 });
  const nats = readSection(s.nats, `${path}.nats`, { url: "", user: "", pass: "" });
  const edges: Record<string, WitnessEdgeOptions> = {};
  for (const [edge, raw] of Object.entries(readObject(s.edges, `${path}.edges`))) {
    const p = `${path}.edges.${edge}`;
    if (!EDGE_ID.test(edge)) throw new ConfigError(`${p}: ${JSON.stringify(edge)} is not an edge id`);
    const e = readSection(raw, p, { origin: "", keys: [], stream: "", tenant: "" });
    const keys = readStringList(e, "keys", p, []);
    if (!keys.length) throw new ConfigError(`${p}.keys must pin at least one verifier key`);
    keys.forEach((k, i) => {
      try {
        parseVerifierKey(k);
      } catch (err) {
        throw new ConfigError(`${p}.keys[${i}]: ${(err as Error).message}`);
      }
    });
    edges[edge] = {
      origin: readString(e, "origin", p, `nops.kernel/${edge}/audit`, { nonEmpty: true }),
      keys,
      stream: readString(e, "stream", p, hubStreamOf(edge), { pattern: /^[A-Za-z0-9_-]{1,255}$/ }),
      tenant: readString(e, "tenant", p, "system", { nonEmpty: true }),
    };
  }
  if (!Object.keys(edges).length) throw new ConfigError(`${path}.edges must name at least one edge`);
  return {
    stateFile: readString(s, "stateFile", path, "", { nonEmpty: true }),
    http: {
      host: readString(http, "host", `${path}.http`, "127.0.0.1", { nonEmpty: true }),
      port: readInt(http, "port", `${path}.http`, 8090, 0, 65535),
    },
    nats: {
      url: readString(nats, "url", `${path}.nats`, "", { pattern: /^(nats|tls):\/\// }),
      user: readString(nats, "user", `${path}.nats`, ""),
      pass: readString(nats, "pass", `${path}.nats`, ""),
    },
    retryMs: readInt(s, "retryMs", path, 2000, 10, 600_000),
    edges,
  };
}
