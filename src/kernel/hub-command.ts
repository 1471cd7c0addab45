import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { ConfigError } from "../common/errors.js";
import { TENANT_PATTERN } from "../common/index.js";
import { commaList, parseCommandFlags, requiredFlag } from "./command-flags.js";
import {
  addHubEdge,
  edgeLinkPermissions,
  KERNEL_COMMAND_VERSION,
  publishCommand,
  readHubEdgeRegistry,
  revokeHubEdge,
  writeHubEdgeRegistry,
} from "../events/index.js";
import { EGRESS_CLASS_NAMES } from "../egress/index.js";
import { DEFAULT_DGE_POLICY, PII_KINDS } from "../../packages/reference-dge/src/index.js";
import { EgressClass, PiiType, Tier } from "../../gen/nops/dge/v1/dge_pb.js";
import { KernelCommandSchema, type KernelCommand } from "../../gen/nops/events/v1/kernel_command_pb.js";

/** Usage of `nops-kernel hub`. */
export const HUB_USAGE = `usage: nops-kernel hub add-edge --registry <edges.json> --edge <id> --tenants <a,b|*>
             --secret-out <file> [--domain <jetstream domain>] [--hub-domain <hub>]
             [--create-hub-stream] [--users-out <edge-users.conf>] [--auth password|nkey]
       nops-kernel hub revoke-edge --registry <edges.json> --edge <id> [--users-out <file>]
       nops-kernel hub list-edges --registry <edges.json>
       nops-kernel hub set-dge-policy --hub <nats url> --edge <id> --tier <1|2|3> [--tenant <t>]
             --max-class <D0..D4> [--allow-pii <email,phone,..>] [--destinations <a,b*>]
             [--ttl <seconds>] --issued-by <who> [--user <u> --password-file <f>]
             [--hub-domain <hub>] [--id <command id>]
       nops-kernel hub clear-dge-policy --hub <nats url> --edge <id> --tier <1|2|3> [--tenant <t>]
             --issued-by <who> [--user <u> --password-file <f>] [--hub-domain <hub>] [--id <command id>]
The registry and edge-users.conf (default: next to the registry) are written 0600; nats/hub.conf
includes edge-users.conf. Reload the hub afterwards (docs/events.md, "Per-edge identity").
set-dge-policy / clear-dge-policy publish a command to the hub's NOPS_CMD; the edge applies it when its
link is up (docs/events.md, "Hub -> edge commands"). Without --tenant they set the tier's default.`;

/** The subcommands of `nops-kernel hub` that publish a command to the hub (async: they connect to it). */
const HUB_COMMAND_SUBS: ReadonlySet<string> = new Set(["set-dge-policy", "clear-dge-policy"]);

const COMMAND_VALUE_FLAGS = new Set([
  "--hub",
  "--user",
  "--password-file",
  "--hub-domain",
  "--edge",
  "--issued-by",
  "--id",
  "--tenant",
  "--tier",
  "--max-class",
  "--allow-pii",
  "--destinations",
  "--ttl",
]);

/** The set_dge_policy command of `hub set-dge-policy` / `hub clear-dge-policy` flags; ConfigError names a bad flag. */
export function dgePolicyCommandOfFlags(sub: string, values: ReadonlyMap<string, string>): KernelCommand {
  const need = (name: string): string => requiredFlag(values, `hub ${sub}`, name);
  const tierFlag = need("--tier");
  const tier = { "1": Tier.TIER_1, "2": Tier.TIER_2, "3": Tier.TIER_3 }[tierFlag];
  if (tier === undefined) throw new ConfigError(`--tier must be 1, 2 or 3 (got ${tierFlag})`);
  const tenant = values.get("--tenant") ?? "";
  if (tenant !== "" && !TENANT_PATTERN.test(tenant)) throw new ConfigError(`--tenant: ${tenant} is not a tenant id`);
  const clear = sub === "clear-dge-policy";
  const policyFlags = ["--max-class", "--allow-pii", "--destinations", "--ttl"];
  let policy = {};
  if (clear) {
    const extra = policyFlags.find((f) => values.has(f));
    if (extra) throw new ConfigError(`hub clear-dge-policy takes no ${extra}`);
  } else {
    const cls = need("--max-class");
    const classIndex = (EGRESS_CLASS_NAMES as readonly string[]).indexOf(cls);
    if (classIndex < 0)
      throw new ConfigError(`--max-class must be one of ${EGRESS_CLASS_NAMES.join(", ")} (got ${cls})`);
    const pii = commaList(values.get("--allow-pii"));
    const unknown = pii.find((k) => !(PII_KINDS as readonly string[]).includes(k));
    if (unknown !== undefined)
      throw new ConfigError(`--allow-pii: unknown type ${unknown} (one of ${PII_KINDS.join(", ")})`);
    const ttlFlag = values.get("--ttl") ?? String(DEFAULT_DGE_POLICY.ttlSeconds);
    const ttl = Number(ttlFlag);
    if (!/^[0-9]+$/.test(ttlFlag) || ttl < 1 || ttl > 86_400)
      throw new ConfigError(`--ttl must be whole seconds from 1 to 86400 (got ${ttlFlag})`);
    policy = {
      maxEgressClass: EgressClass.D0 + classIndex,
      allowedPiiTypes: pii.map((k) => PiiType[k.toUpperCase() as keyof typeof PiiType]),
      allowedDestinations: commaList(values.get("--destinations")),
      ttlSeconds: ttl,
    };
  }
  return create(KernelCommandSchema, {
    version: KERNEL_COMMAND_VERSION,
    id: values.get("--id") ?? randomUUID(),
    targetEdge: need("--edge"),
    issuedAt: timestampNow(),
    issuedBy: need("--issued-by"),
    command: {
      case: "setDgePolicy",
      value: { tenant, tier, clear, ...policy },
    },
  });
}

/** Runs `nops-kernel hub set-dge-policy | clear-dge-policy`: publishes the command to the hub's NOPS_CMD. */
export async function runHubCommandPublish(
  sub: string,
  args: readonly string[],
  out: (s: string) => void,
): Promise<number> {
  const { values } = parseCommandFlags("hub", args, COMMAND_VALUE_FLAGS);
  const command = dgePolicyCommandOfFlags(sub, values);
  const hub = values.get("--hub");
  if (hub === undefined) throw new ConfigError(`hub ${sub} needs --hub`);
  const user = values.get("--user");
  const passwordFile = values.get("--password-file");
  if ((user === undefined) !== (passwordFile === undefined))
    throw new ConfigError("--user and --password-file go together");
  const nc = await connect({
    servers: hub,
    ...(user !== undefined ? { user, pass: readFileSync(passwordFile!, "utf8").trim() } : {}),
  });
  try {
    const domain = values.get("--hub-domain");
    const ack = await publishCommand(jetstream(nc, domain ? { domain } : {}), command);
    out(
      `${ack.duplicate ? "already published" : "published"} command ${command.id} for ${command.targetEdge}` +
        ` (NOPS_CMD seq ${ack.seq}); the edge applies it when its hub link is up`,
    );
    return 0;
  } finally {
    await nc.close();
  }
}

const VALUE_FLAGS = new Set([
  "--registry",
  "--edge",
  "--tenants",
  "--secret-out",
  "--domain",
  "--hub-domain",
  "--users-out",
  "--auth",
]);

/**
 * Runs `nops-kernel hub <sub>`: the hub's registry of edges and their leafnode users, or a command
 * published to the hub (a promise then).
 */
export function runHubCommand(
  sub: string | undefined,
  args: readonly string[],
  out: (s: string) => void,
): number | Promise<number> {
  if (sub === undefined || sub === "help") {
    out(HUB_USAGE);
    return sub === undefined ? 2 : 0;
  }
  if (HUB_COMMAND_SUBS.has(sub)) return runHubCommandPublish(sub, args, out);
  const { values, switches } = parseCommandFlags("hub", args, VALUE_FLAGS, new Set(["--create-hub-stream"]));
  const createHubStream = switches.has("--create-hub-stream");
  const need = (name: string): string => requiredFlag(values, `hub ${sub}`, name);
  const registryPath = need("--registry");
  const usersPath = values.get("--users-out") ?? join(dirname(registryPath), "edge-users.conf");
  const registry = readHubEdgeRegistry(registryPath, values.get("--hub-domain"));
  switch (sub) {
    case "add-edge": {
      const edgeId = need("--edge");
      const tenants = commaList(need("--tenants"));
      const secretPath = need("--secret-out");
      const domain = values.get("--domain");
      const auth = values.get("--auth") ?? "password";
      if (auth !== "password" && auth !== "nkey")
        throw new ConfigError(`--auth must be password or nkey (got ${auth})`);
      const next = addHubEdge(
        registry,
        { edgeId, tenants, createHubStream, ...(domain ? { domain } : {}) },
        secretPath,
        auth,
      );
      writeHubEdgeRegistry(registryPath, usersPath, next);
      const user = `edge-${edgeId}`;
      if (auth === "nkey") {
        out(`added ${edgeId} (nkey user, tenants ${tenants.join(",")}); nkey seed in ${secretPath}`);
        out(`edge leaf remote: nkey: <seed>, urls: nats-leaf://<hub-node>:7422 (every node; nats-server >= 2.10.8)`);
      } else {
        out(`added ${edgeId} (user ${user}, tenants ${tenants.join(",")}); secret in ${secretPath}`);
        out(`edge leaf remote: nats-leaf://${user}:<secret>@<hub-node>:7422 (one URL per hub node)`);
      }
      out(`now reload every hub node: nats-server --signal reload=<pid> (or SIGHUP)`);
      return 0;
    }
    case "revoke-edge": {
      const edgeId = need("--edge");
      writeHubEdgeRegistry(registryPath, usersPath, revokeHubEdge(registry, edgeId));
      out(`revoked ${edgeId}; reload every hub node, then restart them one at a time: nats-server does`);
      out(`not drop an established leaf connection on reload, only refuses its reconnection`);
      return 0;
    }
    case "list-edges": {
      for (const e of registry.edges) {
        const p = edgeLinkPermissions(e, registry.hubDomain);
        out(
          `${e.edgeId}\t${e.nkey !== undefined ? `nkey=${e.nkey}` : `user=${e.user ?? `edge-${e.edgeId}`}`}\tdomain=${e.domain ?? e.edgeId}\ttenants=${e.tenants.join(",")}\tpublish=${p.publish.length} subscribe=${p.subscribe.length} subjects`,
        );
      }
      return 0;
    }
    default:
      throw new ConfigError(
        `hub needs add-edge, revoke-edge, list-edges, set-dge-policy or clear-dge-policy (got ${sub})`,
      );
  }
}
