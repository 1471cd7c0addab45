import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import { create, toBinary } from "@bufbuild/protobuf";
import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/nats-core";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startNatsTopology, waitFor, type NatsTopology } from "../helpers/nats-servers.js";
import { startEdgePipeline, tempDbPath, type EdgePipeline } from "./edge-pipeline.js";
import { systemClock } from "../../src/common/clock.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createPeerRegistry } from "../../src/federation/peer-registry.js";
import { createApiKeyStore, resolveApiKeyOptions } from "../../src/identity/api-keys/api-key-store.js";
import { createHubCommandHandler } from "../../src/kernel/hub-commands.js";
import { ensureHubStreams, publishCommand } from "../../src/events/hub-streams.js";
import { DLQ_HEADERS } from "../../src/events/dead-letter-mover.js";
import type { Db } from "../../src/store/database.js";
import { KernelCommandSchema, type KernelCommand } from "../../gen/nops/events/v1/kernel_command_pb.js";
import { createHubDgePolicies, loadHubDgePolicies, type HubDgePolicies } from "../../src/kernel/hub-dge-policies.js";
import { runHubCommandPublish } from "../../src/kernel/hub-command.js";
import type { CommandHandler } from "../../src/events/kernel-commands.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import { createEgressGuard, resolveEgressGuardOptions, type EgressGuard } from "../../src/egress/index.js";
import {
  resolveDgePoliciesOptions,
  resolveDgeServerOptions,
  startDgeServer,
  type DgePoliciesOptions,
  type DgeServer,
} from "../../packages/reference-dge/src/index.js";
import { DGE_KEYS, makeMeter, makeStore } from "../fixtures/dge-helpers.js";
import { Code, ConnectError } from "@connectrpc/connect";
import Database from "better-sqlite3";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { EgressClass, Tier } from "../../gen/nops/dge/v1/dge_pb.js";
import { startTestKernel } from "../helpers/kernel.js";
import { spawnEchoAgent } from "../routing/fixtures/spawn-echo-agent.js";

const EDGE = "edge1";
const PEER = "spiffe://peer.example/kernel";
const PEPPER = randomBytes(32).toString("base64");

/** The real handler over the pipeline's database, with one pinned peer to change (and the embedded DGE's policies). */
function handlerOn(db: Db, dgePolicies?: HubDgePolicies) {
  const audit = createAuditLog(db, systemClock);
  const peers = createPeerRegistry({ db, audit, clock: systemClock, logger: createSilentLogger() });
  if (!peers.get(PEER))
    peers.add(
      {
        spiffeId: PEER,
        grpcEndpoint: "peer.example:8443",
        httpEndpoint: "https://peer.example:8443",
        bundleSha256: "ab".repeat(32),
      },
      "test",
    );
  const apiKeys = createApiKeyStore({ db, clock: systemClock }, resolveApiKeyOptions({ pepper: PEPPER }));
  return createHubCommandHandler({ peers, apiKeys, audit, ...(dgePolicies ? { dgePolicies } : {}) });
}

function agreementCommand(
  id: string,
  tenant: string,
  extra: { version?: number; targetEdge?: string } = {},
): KernelCommand {
  return create(KernelCommandSchema, {
    version: 1,
    id,
    targetEdge: EDGE,
    issuedBy: "operator@hub",
    command: {
      case: "setPeerAgreement",
      value: { peerSpiffeId: PEER, inbound: { tenants: [tenant], capabilities: ["*"] }, outbound: {} },
    },
    ...extra,
  });
}

function agreementTenants(db: Db): string[] {
  const row = db.prepare("SELECT agreement FROM federation_peers WHERE spiffe_id = ?").get(PEER) as {
    agreement: string;
  };
  return (JSON.parse(row.agreement) as { inbound: { tenants: string[] } }).inbound.tenants;
}

interface Setup {
  topo: NatsTopology;
  hubConn: NatsConnection;
  dbPath: string;
  edge: EdgePipeline;
  startEdge(): EdgePipeline;
}

async function setup(commands: (db: Db) => CommandHandler = handlerOn): Promise<Setup> {
  const topo = await startNatsTopology({ edgeDomain: EDGE, proxied: true });
  let hubConn: NatsConnection | undefined;
  let edge: EdgePipeline | undefined;
  try {
    hubConn = await connect({ servers: topo.hub.url, user: topo.hubUser.user, pass: topo.hubUser.pass });
    await ensureHubStreams(await jetstreamManager(hubConn), { edges: [{ edgeId: EDGE }] });
    const dbPath = tempDbPath();
    const startEdge = () =>
      startEdgePipeline({
        dbPath,
        natsUrl: topo.leaf.url,
        ...topo.kernelUser,
        edgeId: EDGE,
        edgeDomain: EDGE,
        retryInitialMs: 100,
        commands,
      });
    const started = startEdge();
    edge = started;
    // NOPS_CMD_IN exists on the leaf once the bus set it up.
    await waitFor(() => started.bus.jetstreamManager() !== undefined, "edge connected to its leaf");
    await waitFor(
      async () => (await started.bus.jetstreamManager()!.streams.info("NOPS_CMD_IN")) !== undefined,
      "NOPS_CMD_IN",
    );
    return { topo, hubConn, dbPath, edge: started, startEdge };
  } catch (err) {
    await edge?.close().catch(() => undefined);
    await hubConn?.close();
    await topo.destroy();
    throw err;
  }
}

async function teardown(s: Setup): Promise<void> {
  await s.edge.close().catch(() => undefined);
  await s.hubConn.close();
  await s.topo.destroy();
}

const countAudit = (db: Db, action: string): number =>
  (db.prepare("SELECT COUNT(*) AS n FROM audit_log WHERE action = ?").get(action) as { n: number }).n;

test.serial("1,000 hub commands sent while the edge link is cut arrive in order exactly once after heal", async (t) => {
  t.timeout(240_000);
  const s = await setup();
  try {
    const hubJs = jetstream(s.hubConn);
    s.topo.link!.cut();
    const total = 1000;
    for (let i = 0; i < total; i++) {
      await publishCommand(hubJs, agreementCommand(`cmd-${String(i).padStart(4, "0")}`, `t${i}`));
    }
    // A retried publish of the same command (same Nats-Msg-Id) is stored once at the hub.
    await publishCommand(hubJs, agreementCommand("cmd-0000", "t0"));
    const hubInfo = await (await jetstreamManager(s.hubConn)).streams.info("NOPS_CMD");
    t.is(hubInfo.state.messages, total);
    t.is(s.edge.bus.commands()!.applied, 0, "nothing reaches the edge while the link is cut");

    s.topo.link!.heal();
    await waitFor(() => s.edge.bus.commands()!.applied === total, "all commands applied", 180_000, 100);

    const rows = s.edge.db
      .prepare("SELECT command_id, stream_seq, outcome FROM kernel_commands ORDER BY stream_seq")
      .all() as { command_id: string; stream_seq: number; outcome: string }[];
    t.is(rows.length, total);
    t.deepEqual(
      rows.map((r) => r.command_id),
      Array.from({ length: total }, (_, i) => `cmd-${String(i).padStart(4, "0")}`),
      "applied in the order the hub stored them",
    );
    t.true(rows.every((r) => r.outcome === "applied"));
    // Each application went through the registry, which audited it, in order.
    const audited = s.edge.db
      .prepare("SELECT actor, details FROM audit_log WHERE action = 'federation.peer.agreement' ORDER BY seq")
      .all() as { actor: string; details: string }[];
    t.is(audited.length, total);
    t.is(audited[0]!.actor, "hub:operator@hub");
    t.deepEqual(
      audited.map(
        (a) =>
          (JSON.parse(a.details) as { agreement: { inbound: { tenants: string[] } } }).agreement.inbound.tenants[0],
      ),
      Array.from({ length: total }, (_, i) => `t${i}`),
    );
    t.deepEqual(agreementTenants(s.edge.db), [`t${total - 1}`]);

    // A restart resumes after the last applied command: nothing is applied twice.
    await s.edge.close();
    s.edge = s.startEdge();
    // The same command id under a new message id (a hub replay) is skipped, and one new command applies.
    await hubJs.publish(
      `nops.cmd.${EDGE}.setPeerAgreement`,
      toBinary(KernelCommandSchema, agreementCommand("cmd-0005", "replayed")),
      { msgID: "replay-of-cmd-0005" },
    );
    await publishCommand(hubJs, agreementCommand("cmd-after-restart", "after"));
    await waitFor(() => agreementTenants(s.edge.db)[0] === "after", "the command after the restart", 60_000, 100);
    t.is(countAudit(s.edge.db, "federation.peer.agreement"), total + 1);
    const status = s.edge.bus.commands()!;
    t.is(status.applied, total + 1);
    t.is(status.appliedSeq, total + 2);
  } finally {
    await teardown(s);
  }
});

test.serial("an invalid hub command is dead-lettered with its reason and changes nothing", async (t) => {
  t.timeout(120_000);
  const s = await setup();
  try {
    const hubJs = jetstream(s.hubConn);
    await publishCommand(hubJs, agreementCommand("good-1", "acme"));
    await waitFor(() => agreementTenants(s.edge.db)[0] === "acme", "first command applied", 60_000, 100);
    const auditBefore = countAudit(s.edge.db, "federation.peer.agreement");

    // Refused by the registry's own validation (a tenant id that is not one).
    await publishCommand(hubJs, agreementCommand("bad-tenant", "Not A Tenant!"));
    // Refused before any applier runs: an envelope version this kernel does not know.
    await publishCommand(hubJs, agreementCommand("bad-version", "globex", { version: 2 }));
    // Addressed to another edge but published on this edge's subject.
    await hubJs.publish(
      `nops.cmd.${EDGE}.setPeerAgreement`,
      toBinary(KernelCommandSchema, agreementCommand("other-edge", "globex", { targetEdge: "edge2" })),
      { msgID: "other-edge" },
    );
    // An API key that does not exist: revocation is refused, nothing half-applied.
    await publishCommand(
      hubJs,
      create(KernelCommandSchema, {
        version: 1,
        id: "bad-key",
        targetEdge: EDGE,
        issuedBy: "operator@hub",
        command: { case: "revokeApiKey", value: { tenant: "acme", keyId: "0".repeat(24) } },
      }),
    );
    await publishCommand(hubJs, agreementCommand("good-2", "initech"));
    await waitFor(() => agreementTenants(s.edge.db)[0] === "initech", "command after the bad ones", 60_000, 100);

    t.is(countAudit(s.edge.db, "federation.peer.agreement"), auditBefore + 1, "only good-2 changed the agreement");
    const status = s.edge.bus.commands()!;
    t.is(status.applied, 2);
    t.is(status.deadLettered, 4);
    // GetStatus's view of the link: nothing behind once the leaf's stream info is refreshed, four refused.
    await waitFor(
      () => s.edge.bus.links().find((l) => l.name === "commands")?.lagMessages === 0,
      "no lag",
      30_000,
      100,
    );
    const link = s.edge.bus.links().find((l) => l.name === "commands")!;
    t.is(link.rejected, 4);
    t.is(link.lagSeconds, 0);
    t.truthy(link.lastSyncAt);
    const outcomes = Object.fromEntries(
      (
        s.edge.db.prepare("SELECT command_id, outcome, reason FROM kernel_commands").all() as {
          command_id: string;
          outcome: string;
          reason: string;
        }[]
      ).map((r) => [r.command_id, `${r.outcome}: ${r.reason}`]),
    );
    t.regex(outcomes["bad-tenant"]!, /^dead-lettered: agreement\.inbound\.tenants\[0\]: is not a tenant id/);
    t.regex(outcomes["bad-version"]!, /^dead-lettered: version 2 is not supported/);
    t.regex(outcomes["other-edge"]!, /^dead-lettered: target_edge edge2 is not this edge/);
    t.regex(outcomes["bad-key"]!, /^dead-lettered: revoke_api_key: tenant acme has no api key/);
    t.is(countAudit(s.edge.db, "hub.command.setPeerAgreement"), 3, "every refusal is audited");

    // The dead letters sit in the leaf's NOPS_DLQ with their reason.
    const leafJsm = await jetstreamManager(s.edge.bus.connection()!);
    const dlq = await leafJsm.streams.info("NOPS_DLQ");
    t.is(dlq.state.messages, 4);
    const reasons: string[] = [];
    for (let seq = dlq.state.first_seq; seq <= dlq.state.last_seq; seq++) {
      const m = await leafJsm.streams.getMessage("NOPS_DLQ", { seq });
      t.is(m?.subject, "nops.dlq.system.system--commands");
      reasons.push(m?.header?.get(DLQ_HEADERS.reason) ?? "");
    }
    t.regex(reasons[0]!, /is not a tenant id/);
    t.regex(reasons[1]!, /version 2/);
  } finally {
    await teardown(s);
  }
});

/** The kernel's wiring of the embedded DGE (start-kernel.ts): its policies, and the guard that caches them. */
interface DgeSetup {
  server: DgeServer;
  guard: EgressGuard;
  config: DgePoliciesOptions;
  /** The handler factory of the edge pipeline: the real handler with the DGE policies over the edge's database. */
  commands(db: Db): CommandHandler;
}

async function dgeSetup(): Promise<DgeSetup> {
  // The config file lets tier 1 send email addresses (D2) anywhere.
  const config = resolveDgePoliciesOptions({ tiers: { 1: { maxEgressClass: "D2", allowedPiiTypes: ["email"] } } });
  const server = await startDgeServer(
    { clock: systemClock, logger: createSilentLogger() },
    { ...resolveDgeServerOptions({ port: 0, keys: DGE_KEYS, classifyThreads: 1 }), policies: config },
  );
  const store = makeStore();
  const guard = createEgressGuard(
    {
      clock: systemClock,
      logger: createSilentLogger(),
      meter: makeMeter().provider.getMeter("test"),
      dge: createDgeClient(
        { clock: systemClock },
        { url: server.url, protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 },
      ),
      events: store.events,
      audit: store.audit,
      db: store.db,
    },
    resolveEgressGuardOptions({ tenantTiers: { acme: 1 } }),
  );
  return {
    server,
    guard,
    config,
    commands(db) {
      // As the kernel starts its embedded DGE: the config file's policies with the persisted hub ones on top.
      server.setPolicies(loadHubDgePolicies(db, config));
      const dgePolicies = createHubDgePolicies(
        {
          db,
          audit: createAuditLog(db, systemClock),
          clock: systemClock,
          logger: createSilentLogger(),
          dge: server,
          guard,
        },
        config,
      );
      return handlerOn(db, dgePolicies);
    },
  };
}

const CRM_CALL = {
  tenant: "acme",
  transport: "http",
  destination: "https://crm.example/notes",
  dataType: "application/json",
  payload: JSON.stringify({ note: "call back anna.smith@example.com" }),
} as const;

test.serial(
  "a DGE policy sent while the edge is cut off arrives after heal, applies once and blocks at once; a restart keeps it",
  async (t) => {
    t.timeout(180_000);
    const dge = await dgeSetup();
    const dir = mkdtempSync(join(tmpdir(), "nops-hub-dge-"));
    const s = await setup((db) => dge.commands(db));
    try {
      const passwordFile = join(dir, "hub.pass");
      writeFileSync(passwordFile, s.topo.hubUser.pass, { mode: 0o600 });
      const lines: string[] = [];
      const send = (...flags: string[]) =>
        runHubCommandPublish(
          flags[0]!,
          ["--hub", s.topo.hub.url, "--user", s.topo.hubUser.user, "--password-file", passwordFile, ...flags.slice(1)],
          (l) => lines.push(l),
        );

      // Allowed by the config file's policy, and the verdict is cached (for up to 5 minutes).
      t.true((await dge.guard.check(CRM_CALL)).allowed);
      t.true((await dge.guard.check(CRM_CALL)).cached);

      s.topo.link!.cut();
      const tighten = [
        "set-dge-policy",
        "--edge",
        EDGE,
        "--tier",
        "1",
        "--tenant",
        "acme",
        "--max-class",
        "D1",
        "--issued-by",
        "ops@hub",
        "--id",
        "dge-acme-1",
      ];
      t.is(await send(...tighten), 0);
      // A retried publish of the same command is stored once at the hub.
      t.is(await send(...tighten), 0);
      t.regex(lines[0]!, /^published command dge-acme-1 for edge1/);
      t.regex(lines[1]!, /^already published command dge-acme-1/);
      t.is(s.edge.bus.commands()!.applied, 0, "nothing reaches the edge while the link is cut");
      t.true((await dge.guard.check(CRM_CALL)).allowed, "the old policy holds until the command arrives");

      s.topo.link!.heal();
      await waitFor(() => s.edge.bus.commands()!.applied === 1, "the policy applied", 60_000, 50);
      // Right away, not after the cache TTL: the guard's copy was dropped when the command committed.
      const blocked = await dge.guard.check(CRM_CALL);
      t.false(blocked.allowed);
      t.is(blocked.reason, "pii_type_not_allowed");

      const audited = s.edge.db
        .prepare("SELECT actor, tenant, resource, details FROM audit_log WHERE action = 'dge.policy.set'")
        .all() as { actor: string; tenant: string; resource: string; details: string }[];
      t.is(audited.length, 1, "applied once");
      t.like(audited[0], { actor: "hub:ops@hub", tenant: "acme", resource: "dge-policy/acme/1" });
      t.like(JSON.parse(audited[0]!.details), {
        command: "dge-acme-1",
        policy: { maxEgressClass: "D1", allowedPiiTypes: [], allowedDestinations: [], ttlSeconds: 300 },
      });

      // A restart: the DGE comes back with the config file's policies, then the persisted hub policy on top.
      await s.edge.close();
      dge.server.setPolicies(dge.config);
      await dge.guard.invalidate("acme", "test: a fresh process");
      t.true((await dge.guard.check(CRM_CALL)).allowed, "the config file alone allows it");
      s.edge = s.startEdge();
      await dge.guard.invalidate("acme", "test: a fresh process");
      t.false((await dge.guard.check(CRM_CALL)).allowed, "the hub's policy survived the restart");
      t.is(s.edge.bus.commands()!.applied, 1, "nothing applied twice");

      // Clearing the hub's policy gives the config file's back, at once.
      t.is(
        await send("clear-dge-policy", "--edge", EDGE, "--tier", "1", "--tenant", "acme", "--issued-by", "ops@hub"),
        0,
      );
      await waitFor(() => s.edge.bus.commands()!.applied === 2, "the clear applied", 60_000, 50);
      t.true((await dge.guard.check(CRM_CALL)).allowed);
      t.is(countAudit(s.edge.db, "dge.policy.clear"), 1);
    } finally {
      await teardown(s);
      await dge.guard.close();
      await dge.server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test.serial(
  "an invalid DGE policy, or one for an external DGE, is dead-lettered with its reason and changes nothing",
  async (t) => {
    t.timeout(120_000);
    const dge = await dgeSetup();
    let external = false;
    // The same edge, restarted with an external DGE (no policies of its own to set).
    const s = await setup((db) => (external ? handlerOn(db) : dge.commands(db)));
    try {
      const hubJs = jetstream(s.hubConn);
      const policy = (id: string, value: Record<string, unknown>): KernelCommand =>
        create(KernelCommandSchema, {
          version: 1,
          id,
          targetEdge: EDGE,
          issuedBy: "ops@hub",
          command: { case: "setDgePolicy", value },
        });
      await publishCommand(hubJs, policy("ttl-zero", { tenant: "acme", tier: 1, maxEgressClass: 2, ttlSeconds: 0 }));
      await publishCommand(hubJs, policy("no-tier", { tenant: "acme", maxEgressClass: 2, ttlSeconds: 60 }));
      await publishCommand(hubJs, policy("clear-nothing", { tenant: "acme", tier: 1, clear: true }));
      await publishCommand(hubJs, policy("good", { tier: 2, maxEgressClass: 1, ttlSeconds: 60 }));
      await waitFor(() => s.edge.bus.commands()!.applied === 1, "the good one applied", 60_000, 50);
      t.is(s.edge.bus.commands()!.deadLettered, 3);
      const overrides = () =>
        s.edge.db.prepare("SELECT tenant, tier, command_id FROM dge_policy_overrides").all() as {
          tenant: string;
          tier: string;
          command_id: string;
        }[];
      t.deepEqual(overrides(), [{ tenant: "", tier: "2", command_id: "good" }], "only the valid policy was written");
      t.is(countAudit(s.edge.db, "dge.policy.set"), 1);
      t.is(countAudit(s.edge.db, "hub.command.setDgePolicy"), 3, "every refusal is audited");

      await s.edge.close();
      external = true;
      s.edge = s.startEdge();
      await publishCommand(hubJs, policy("external", { tenant: "acme", tier: 1, maxEgressClass: 1, ttlSeconds: 60 }));
      await waitFor(() => s.edge.bus.commands()!.deadLettered === 4, "the external one dead-lettered", 60_000, 50);
      t.is(overrides().length, 1);

      const reasons = Object.fromEntries(
        (
          s.edge.db.prepare("SELECT command_id, reason FROM kernel_commands").all() as {
            command_id: string;
            reason: string;
          }[]
        ).map((r) => [r.command_id, r.reason]),
      );
      t.regex(reasons["ttl-zero"]!, /^set_dge_policy\.ttlSeconds/);
      t.is(reasons["no-tier"], "set_dge_policy.tier: must be TIER_1, TIER_2 or TIER_3");
      t.is(reasons["clear-nothing"], "set_dge_policy.clear: the hub set no policy for tenant acme at tier 1");
      t.is(reasons["external"], "set_dge_policy: this edge's DGE is external; its policies are managed there");
      const leafJsm = await jetstreamManager(s.edge.bus.connection()!);
      t.is((await leafJsm.streams.info("NOPS_DLQ")).state.messages, 4, "each one sits in NOPS_DLQ");
    } finally {
      await teardown(s);
      await dge.guard.close();
      await dge.server.close();
    }
  },
);

test.serial(
  "kernel - a hub DGE policy blocks an Invoke the config file allowed, at once and after a restart",
  async (t) => {
    t.timeout(180_000);
    const topo = await startNatsTopology({ edgeDomain: "edge-k" });
    t.teardown(() => topo.destroy());
    const hubConn = await connect({ servers: topo.hub.url, user: topo.hubUser.user, pass: topo.hubUser.pass });
    t.teardown(() => hubConn.close());
    await ensureHubStreams(await jetstreamManager(hubConn), { edges: [{ edgeId: "edge-k" }] });
    const agent = await spawnEchoAgent({ name: "echo-1" });
    t.teardown(() => agent.kill());
    const raw = {
      edgeId: "edge-k",
      nats: { url: topo.leaf.url },
      events: { natsUser: topo.kernelUser.user, natsPassword: topo.kernelUser.pass, edgeDomain: topo.edgeDomain },
      egress: { tenantTiers: { acme: 1 } },
      // The config file lets tier 1 send email addresses out.
      dge: { policies: { tiers: { 1: { maxEgressClass: "D2", allowedPiiTypes: ["email"] } } } },
    };
    const first = await startTestKernel(t, raw);
    await first.client(AgentRegistryService, "grpc-js").registerAgent({
      tenant: "acme",
      name: "echo",
      version: "1",
      endpoint: agent.endpoint,
      capabilities: [{ name: "echo" }],
    });
    const invoke = (k: typeof first) =>
      k.client(RoutingService, "grpc-js").invoke({
        tenant: "acme",
        capability: "echo",
        payload: new TextEncoder().encode("call back anna.smith@example.com"),
        contentType: "text/plain",
      });
    await invoke(first);
    await invoke(first); // its verdict is now cached

    await publishCommand(
      jetstream(hubConn),
      create(KernelCommandSchema, {
        version: 1,
        id: "tighten-acme",
        targetEdge: "edge-k",
        issuedBy: "ops@hub",
        command: {
          case: "setDgePolicy",
          value: { tenant: "acme", tier: Tier.TIER_1, maxEgressClass: EgressClass.D1, ttlSeconds: 300 },
        },
      }),
    );
    const applied = () => {
      const db = new Database(first.kernel.options.databasePath, { readonly: true });
      try {
        return db.prepare("SELECT outcome FROM kernel_commands WHERE command_id = 'tighten-acme'").get() as
          | { outcome: string }
          | undefined;
      } finally {
        db.close();
      }
    };
    await waitFor(() => applied() !== undefined, "the command settled", 60_000, 50);
    t.is(applied()?.outcome, "applied");
    const blocked = ConnectError.from(await t.throwsAsync(invoke(first)));
    t.is(blocked.code, Code.PermissionDenied);
    t.regex(blocked.message, /egress blocked: pii_type_not_allowed/);

    await first.kernel.stop();
    const second = await startTestKernel(t, { ...raw, dataDir: first.dir });
    const again = ConnectError.from(await t.throwsAsync(invoke(second)));
    t.regex(again.message, /egress blocked: pii_type_not_allowed/, "the hub's policy is back after the restart");
  },
);
