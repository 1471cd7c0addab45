import { readFileSync } from "node:fs";
import { systemClock } from "../common/clock.js";
import { ConfigError } from "../common/errors.js";
import { commaList, parseCommandFlags } from "./command-flags.js";
import { createAuditLog } from "../audit/audit-log.js";
import { createLogger } from "../telemetry/logger.js";
import { createPeerRegistry, PeerRegistryError, type PeerRecord } from "../federation/index.js";
import { bundleFingerprint } from "../federation/spiffe-bundle.js";
import { openKernelDatabase } from "./start-kernel.js";
import type { KernelOptions } from "./kernel-options.js";

/** Usage of `nops-kernel peers`. */
export const PEERS_USAGE = `usage: nops-kernel peers list
       nops-kernel peers add --spiffe-id <id> --grpc <host:port> --http <https://host:port>
             (--bundle-file <spiffe-bundle.json|ca.pem> | --bundle-sha256 <hex>)
             [--bundle-endpoint <url>] [--profile https_spiffe|https_web]
             [--inbound-tenants a,b] [--inbound-capabilities x,y]
             [--outbound-tenants a,b] [--outbound-capabilities x,y]
       nops-kernel peers remove --spiffe-id <id>`;

const FLAGS = new Set([
  "--spiffe-id",
  "--grpc",
  "--http",
  "--bundle-file",
  "--bundle-sha256",
  "--bundle-endpoint",
  "--profile",
  "--inbound-tenants",
  "--inbound-capabilities",
  "--outbound-tenants",
  "--outbound-capabilities",
]);

function describe(p: PeerRecord): string {
  const fp = p.bundle
    ? `bundle ${bundleFingerprint(p.bundle.x509).slice(0, 16)}… seq ${p.bundle.sequence}`
    : "no bundle yet";
  const why = p.state === "quarantined" ? ` (${p.quarantineReason})` : "";
  const a = p.agreement;
  return (
    `${p.spiffeId}  ${p.state}${why}${p.kernelId ? `  kernel ${p.kernelId}` : ""}\n` +
    `    grpc ${p.grpcEndpoint}  http ${p.httpEndpoint}  ${fp}\n` +
    `    inbound tenants [${a.inbound.tenants.join(",")}] capabilities [${a.inbound.capabilities.join(",")}]` +
    `  outbound tenants [${a.outbound.tenants.join(",")}] capabilities [${a.outbound.capabilities.join(",")}]`
  );
}

/**
 * `nops-kernel peers list|add|remove`: edits the peer registry in the kernel's database (audited,
 * actor "cli"); a running kernel picks the change up within federation.reloadIntervalMs.
 */
export function runPeersCommand(
  sub: string | undefined,
  args: readonly string[],
  options: KernelOptions,
  out: (s: string) => void,
): number {
  if (sub === "help" || sub === undefined) {
    out(PEERS_USAGE);
    return sub === undefined ? 2 : 0;
  }
  const flags = parseCommandFlags("peers", args, FLAGS).values;
  const db = openKernelDatabase(options);
  try {
    const registry = createPeerRegistry({
      db,
      audit: createAuditLog(db, systemClock),
      clock: systemClock,
      logger: createLogger({ ...options.log, level: "silent" }),
    });
    const need = (name: string) => {
      const v = flags.get(name);
      if (!v) throw new ConfigError(`peers ${sub ?? ""}: ${name} is required`);
      return v;
    };
    try {
      switch (sub) {
        case "list": {
          const peers = registry.list();
          if (peers.length === 0) out("no peers");
          for (const p of peers) out(describe(p));
          return 0;
        }
        case "add": {
          const file = flags.get("--bundle-file");
          const record = registry.add(
            {
              spiffeId: need("--spiffe-id"),
              grpcEndpoint: need("--grpc"),
              httpEndpoint: need("--http"),
              bundleEndpointUrl: flags.get("--bundle-endpoint"),
              bundleEndpointProfile: flags.get("--profile"),
              bundle: file ? readFileSync(file, "utf8") : undefined,
              bundleSha256: flags.get("--bundle-sha256"),
              agreement: {
                inbound: {
                  tenants: commaList(flags.get("--inbound-tenants")),
                  capabilities: commaList(flags.get("--inbound-capabilities")),
                },
                outbound: {
                  tenants: commaList(flags.get("--outbound-tenants")),
                  capabilities: commaList(flags.get("--outbound-capabilities")),
                },
              },
            },
            "cli",
          );
          out(`pinned ${describe(record)}`);
          return 0;
        }
        case "remove": {
          const id = need("--spiffe-id");
          registry.remove(id, "cli");
          out(`removed ${id}`);
          return 0;
        }
        default:
          throw new ConfigError(`peers needs list, add or remove (got ${sub ?? "nothing"})`);
      }
    } catch (err) {
      if (err instanceof PeerRegistryError) throw new ConfigError(err.message);
      throw err;
    }
  } finally {
    db.close();
  }
}
