// The kernel's interceptor chain alone, in one process (issue 18 item 3): the links a unary call
// passes on its way to a handler that answers at once, as start-kernel.ts orders them (left out: the
// overload guard, which only reads a boolean, and peer principals, which pass a caller without a
// foreign SPIFFE id straight on). Anonymous callers allowed, no signature, tracing off,
// metrics on the kernel's own telemetry (its histograms are tallies), the rate limiter in memory
// with the caller's address lifted as the benches lift it. Reports the CPU time per call over
// interleaved rounds, with and without a caller deadline (without one, the deadline link runs the
// call under its cap). tsx compiles with esbuild's keepNames, which names every closure a
// link makes per call; the built kernel does not, so these figures are a little high.
//   node --import tsx bench/chain.ts [--calls 200000] [--rounds 5] [--inflight 64]
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { createContextValues, createHandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  AgentRegistryService,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
} from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { createAuditLog } from "../src/audit/audit-log.js";
import { createAuthzInterceptor } from "../src/authz/authz-interceptor.js";
import { resolveAuthzOptions } from "../src/authz/authz-options.js";
import { systemClock as clock } from "../src/common/clock.js";
import { createAuthnInterceptor, resolveAuthnOptions } from "../src/identity/authn-interceptor.js";
import { createNonceStore } from "../src/identity/request-signing/nonce-store.js";
import { createRequestSigningInterceptor } from "../src/identity/request-signing/request-signing-interceptor.js";
import { resolveRequestSigningOptions } from "../src/identity/request-signing/request-signing-options.js";
import { createSpiffePrincipalMapper, resolveSpiffePrincipalOptions } from "../src/identity/spiffe-principal-mapper.js";
import { createRateLimitInterceptor } from "../src/ratelimit/rate-limit-interceptor.js";
import { resolveRateLimitOptions } from "../src/ratelimit/rate-limit-options.js";
import { bindService } from "../src/server/bind-service.js";
import {
  correlationInterceptor,
  deadlineInterceptor,
  errorMappingInterceptor,
  loggingInterceptor,
} from "../src/server/core-interceptors.js";
import { kPeer } from "../src/server/interceptor.js";
import { createStreamShutdown } from "../src/server/shutdown-interceptor.js";
import { openDatabase } from "../src/store/database.js";
import { MIGRATIONS } from "../src/store/migrations/index.js";
import { migrateUp } from "../src/store/migrator.js";
import { createOutbox } from "../src/store/outbox.js";
import { createSqliteOutboxStore } from "../src/store/outbox-store.js";
import { createSilentLogger } from "../src/telemetry/logger.js";
import { rpcMetricsInterceptor } from "../src/telemetry/rpc-metrics-interceptor.js";
import { createTelemetry } from "../src/telemetry/telemetry.js";
import { DEFAULT_TELEMETRY_OPTIONS } from "../src/telemetry/telemetry-options.js";

const { values: args } = parseArgs({
  options: {
    calls: { type: "string", default: "200000" },
    rounds: { type: "string", default: "5" },
    inflight: { type: "string", default: "64" },
  },
});
const calls = Number(args.calls);
const rounds = Number(args.rounds);
const inflight = Number(args.inflight);

const logger = createSilentLogger();
const db = openDatabase({ path: ":memory:" });
migrateUp(db, MIGRATIONS);
const audit = createAuditLog(db, clock);
const meter = createTelemetry(DEFAULT_TELEMETRY_OPTIONS, { logger }).meter("bench");
const events = createOutbox(createSqliteOutboxStore(db), { source: "bench", clock });
const chain = [
  correlationInterceptor(logger),
  loggingInterceptor(),
  rpcMetricsInterceptor(meter),
  errorMappingInterceptor(),
  createStreamShutdown().interceptor,
  deadlineInterceptor(30_000),
  createRequestSigningInterceptor(
    { nonces: createNonceStore({ clock, logger }), audit, clock, logger },
    resolveRequestSigningOptions({}),
  ),
  createAuthnInterceptor(
    { spiffePrincipals: createSpiffePrincipalMapper(resolveSpiffePrincipalOptions({})), audit, clock, logger },
    resolveAuthnOptions({ allowAnonymous: true }),
  ),
  createRateLimitInterceptor(
    { events, audit, clock, logger, meter },
    resolveRateLimitOptions({ ipOverrides: { "127.0.0.1": 1_000_000_000 } }),
  ),
  createAuthzInterceptor({ audit, clock, logger }, resolveAuthzOptions({ allowAnonymous: true })),
];
const answer = create(HeartbeatResponseSchema);
const impl = Object.fromEntries(
  AgentRegistryService.methods.map((m) => [m.localName, () => answer]),
) as unknown as ServiceImpl<typeof AgentRegistryService>;
const heartbeat = bindService(AgentRegistryService, impl, chain).impl.heartbeat!;
const request = create(HeartbeatRequestSchema, { tenant: "bench", id: "a1" });
const method = AgentRegistryService.method.heartbeat;

function context(timeoutMs: number | undefined) {
  const values = createContextValues().set(kPeer, {
    address: "127.0.0.1:40000",
    transport: "grpc-js",
    certificates: [],
  });
  return createHandlerContext({
    service: AgentRegistryService,
    method,
    protocolName: "grpc",
    requestMethod: "POST",
    url: `/${AgentRegistryService.typeName}/${method.name}`,
    timeoutMs,
    contextValues: values,
  });
}

/** CPU µs per call for `calls` calls, `inflight` at a time; contexts are made outside the window. */
async function run(timeoutMs: number | undefined): Promise<number> {
  let used = 0;
  for (let done = 0; done < calls; done += inflight) {
    const ctxs = Array.from({ length: inflight }, () => context(timeoutMs));
    const before = process.cpuUsage();
    await Promise.all(ctxs.map((ctx) => heartbeat(request, ctx)));
    const d = process.cpuUsage(before);
    used += d.user + d.system;
  }
  return used / calls;
}

const cases = { "caller deadline 10 s": 10_000, "no caller deadline (capped)": undefined };
const results = new Map<string, number[]>();
await run(10_000); // warm-up
for (let r = 0; r < rounds; r++) {
  for (const [name, timeout] of Object.entries(cases))
    results.set(name, [...(results.get(name) ?? []), await run(timeout)]);
}
process.stdout.write(
  `\nchain bench: ${chain.length} links, ${calls} unary calls per round, ${inflight} in flight, ${rounds} rounds\n`,
);
for (const [name, us] of results) {
  const sorted = [...us].sort((a, b) => a - b);
  process.stdout.write(
    `${name.padEnd(30)} CPU per call ${sorted[Math.floor(sorted.length / 2)]!.toFixed(2)} us  [${sorted[0]!.toFixed(2)}–${sorted.at(-1)!.toFixed(2)}]\n`,
  );
}
process.exit(0);
