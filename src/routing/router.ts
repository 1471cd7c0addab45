import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ConnectionOptions } from "node:tls";
import { OVERRIDE_HEADER, TENANT_HEADER, type EgressPreSend } from "../egress/index.js";
import type { Attributes, Meter } from "@opentelemetry/api";
import { BrokenCircuitError } from "cockatiel";
import {
  HandleRequestSchema,
  HandleStreamRequestSchema,
  InvocationSchema,
  type Invocation,
} from "../../gen/nops/agent/v1/agent_pb.js";
import type { Agent } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { type Clock, canceled, deadlineExceeded, unavailable } from "../common/index.js";
import { createTally, type Logger } from "../telemetry/index.js";
import type { AuditLog } from "../audit/index.js";
import { agentSpiffeId, DEFAULT_TRUST_DOMAIN } from "../identity/index.js";
import {
  createAgentChannelPool,
  EndpointError,
  type AgentCallOptions,
  type AgentClient,
  type PeerRejection,
} from "./agent-channel-pool.js";
import { AgentCallError } from "./agent-h2-client.js";
import { createAgentSelector, type Selection, type SelectionConstraints } from "./agent-selector.js";
import { createAgentStatsTracker } from "./agent-stats.js";
import { createCircuitBreakers, type CircuitStateName } from "./circuit-breakers.js";
import { createRetryBudget, type RetryBudget } from "./retry-budget.js";
import type { RoutableAgents } from "./routable-agents.js";
import type { RoutingOptions } from "./routing-options.js";

/** One request to route to an agent. */
export interface InvokeParams {
  tenant: string;
  capability: string;
  payload: Uint8Array;
  contentType: string;
  constraints: SelectionConstraints;
  /** The caller allows a second execution: retries after delivery and hedging. */
  idempotent: boolean;
  /** Time the caller still waits, ms (its deadline); the router's default when undefined. */
  timeoutMs: number | undefined;
  /** Aborted when the caller goes away. */
  signal: AbortSignal;
  /** W3C Trace Context headers of the caller, propagated to the agent. */
  traceparent?: string;
  tracestate?: string;
  /** Correlation id, sent as x-request-id. */
  requestId?: string;
  /** Break-glass grant the caller presented (x-enis-override), for the Egress Guard. */
  override?: string;
  /** Audit actor of the caller (its principal id): a forwarded call's delegation names it. */
  caller?: string;
  /** Kernels this call already crossed (HOPS_HEADER); 0 for a call that started here. */
  hops?: number;
}

/** Request header carrying how many kernels a call crossed (federation: loops are refused by a limit). */
export const HOPS_HEADER = "x-nops-hops";

/** A call routed to a peer kernel instead of a local agent. */
export interface RemoteRoute {
  selection: Selection;
  invoke(p: InvokeParams): Promise<InvokeResult>;
  invokeStream(p: InvokeParams): AsyncIterable<StreamChunk>;
}

/**
 * Agents of federated peer kernels (src/federation implements it). `pick` answers undefined when the
 * call stays local; it asks `hasLocal` (a local pick) only when a peer could take the call, since
 * local agents come first unless the constraints name a peer. It throws UNAVAILABLE when only an
 * unreachable peer could serve the call.
 */
export interface RemoteAgents {
  pick(
    p: Pick<InvokeParams, "tenant" | "capability" | "constraints" | "hops">,
    hasLocal: () => boolean,
  ): RemoteRoute | undefined;
}

/** The agent's answer to an Invoke. */
export interface InvokeResult {
  payload: Uint8Array;
  contentType: string;
  agent: Agent;
  /** Attempts made, including the one that answered. */
  attempts: number;
}

/** One chunk of a streamed answer. */
export interface StreamChunk {
  payload: Uint8Array;
  contentType: string;
  agent: Agent;
}

/** The kernel's data plane: picks live agents and calls them with deadlines, retries and failover. */
export interface Router {
  /** Picks an agent without calling it; UNAVAILABLE when none is routable. */
  route(tenant: string, capability: string, constraints: SelectionConstraints): Selection;
  invoke(params: InvokeParams): Promise<InvokeResult>;
  /** Streams the chunks of HandleStream; fails over only before the first chunk. */
  invokeStream(params: InvokeParams): AsyncIterable<StreamChunk>;
  /** Circuit state of an agent. */
  circuitState(agentId: string): CircuitStateName;
  /** Drops what the router holds for a removed agent and closes its channel. */
  forgetAgent(agent: Agent): void;
  /** Closes every agent channel. */
  close(): void;
}

/** Dependencies of the router. The kernel wires the Egress Guard hook and SPIFFE mTLS options. */
export interface RouterDeps {
  agents: RoutableAgents;
  /**
   * node:tls options with the current SVID that accept only a server presenting `expectedId` (the
   * agent's registered SPIFFE ID), built for every new session; without them (no TLS) the kernel
   * cannot check who answers.
   */
  tls?: (expectedId: string | undefined, onReject: (err: Error) => void) => ConnectionOptions;
  /** The Egress Guard's pre-send hook on every agent call (createEgressPreSend). */
  egress: EgressPreSend;
  /**
   * The kernel's trust domain: agents with no recorded SPIFFE ID must present the scheme's agent id
   * in it. @default "nops.local"
   */
  trustDomain?: string;
  /** Where identity mismatches are recorded ("routing.identity_mismatch"). */
  audit?: AuditLog;
  clock: Clock;
  logger: Logger;
  meter: Meter;
  /** Uniform random in [0, 1) for sampling and jitter. @default Math.random */
  random?: () => number;
  /** Peer kernels' agents, used when no local agent can take a call (docs/federation.md). */
  remote?: RemoteAgents;
}

/** Why one attempt failed, as the retry loop needs it. */
interface AttemptFailure {
  error: ConnectError;
  /** The request may have reached the agent (so only idempotent requests may be retried). */
  delivered: boolean;
  /** The agent's endpoint failed its identity check: never pick it again for this call. */
  impostor?: boolean;
}

// Codes that say the agent (not the request) is unwell: they count against its circuit.
const AGENT_FAILURE_CODES = new Set<Code>([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Internal,
  Code.Unknown,
  Code.ResourceExhausted,
  Code.DataLoss,
]);
// Attributes of the Invoke duration histogram, built once rather than per call.
const INVOKE_OK: Attributes = Object.freeze({ outcome: "ok" });
const INVOKE_ERROR: Attributes = Object.freeze({ outcome: "error" });

// Codes worth another attempt when the request is idempotent (gRPC retry design, A6).
const RETRYABLE_CODES = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted, Code.Aborted]);

function classify(e: unknown): AttemptFailure {
  if (e instanceof AttemptFailureError) return e.failure;
  if (e instanceof BrokenCircuitError) {
    return { error: unavailable("agent circuit is open"), delivered: false };
  }
  if (e instanceof EndpointError) return { error: unavailable("agent endpoint is not routable"), delivered: false };
  if (e instanceof AgentCallError) {
    // The client knows whether a byte reached the agent (src/routing/agent-h2-client.ts); a call
    // that never got a connection did no work anywhere, so re-routing it is safe.
    return { error: new ConnectError(e.delivered ? e.details : "agent unavailable", e.code), delivered: e.delivered };
  }
  if (e instanceof Error && e.name === "AbortError") return { error: canceled("request cancelled"), delivered: true };
  return { error: ConnectError.from(e, Code.Internal), delivered: true };
}

// The caller's signal carries why it ended: connect-es aborts it with DEADLINE_EXCEEDED on timeout.
function callerGone(signal: AbortSignal): ConnectError {
  return signal.reason instanceof ConnectError ? signal.reason : canceled("request cancelled");
}

class AttemptFailureError extends Error {
  override name = "AttemptFailureError";
  constructor(readonly failure: AttemptFailure) {
    super(failure.error.message);
  }
}

/** Creates the router and its channel pool. */
export function createRouter(deps: RouterDeps, options: RoutingOptions): Router {
  const log = deps.logger;
  const random = deps.random ?? Math.random;
  const stats = createAgentStatsTracker(deps.clock, {
    ewmaAlpha: options.scoring.ewmaAlpha,
    decayMs: options.scoring.decayMs,
  });
  const attemptsCounter = createTally(deps.meter, "nops_routing_attempts_total", {
    labels: ["outcome"],
    description: "Outbound agent calls by outcome",
  });
  const retriesCounter = deps.meter.createCounter("nops_routing_retries_total", {
    description: "Retries and hedges started",
  });
  const budgetCounter = deps.meter.createCounter("nops_routing_retry_budget_exhausted_total", {
    description: "Retries refused by the retry budget",
  });
  const circuitCounter = deps.meter.createCounter("nops_routing_circuit_transitions_total", {
    description: "Circuit breaker state changes",
  });
  const duration = deps.meter.createHistogram("nops_routing_invoke_duration_ms", {
    description: "Invoke latency through the kernel",
    unit: "ms",
  });
  const breakers = createCircuitBreakers(
    {
      clock: deps.clock,
      isFailure: (e) => e instanceof AgentCallError && AGENT_FAILURE_CODES.has(e.code),
      onStateChange: (agentId, state) => {
        circuitCounter.add(1, { state });
        log.info({ agentId, state }, "agent circuit changed state");
      },
    },
    options.circuitBreaker,
  );
  const budget: RetryBudget = createRetryBudget(deps.clock, {
    ratio: options.retry.budgetRatio,
    minPerSecond: options.retry.budgetMinPerSecond,
    windowMs: options.retry.budgetWindowMs,
  });
  const pool = createAgentChannelPool(
    {
      ...(deps.tls ? { tls: deps.tls } : {}),
      egress: deps.egress,
      clock: deps.clock,
      logger: log,
    },
    options.channels,
  );
  const mismatchCounter = deps.meter.createCounter("nops_routing_identity_mismatch_total", {
    description: "Agent endpoints that did not present the SPIFFE ID their agent registered with",
  });
  const trustDomain = deps.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  // Agents whose endpoint failed its identity check, by id: the revision that failed and until
  // when. An update or re-registration (new revision), or the end of the hold, lets the agent be
  // tried again with a fresh handshake.
  const barred = new Map<string, { revision: bigint; until: number }>();
  const isBarred = (agent: Agent): boolean => {
    const b = barred.get(agent.id);
    return b !== undefined && b.revision === agent.revision && b.until > deps.clock.now();
  };
  const expectedIdOf = (agent: Agent): string => agent.spiffeId || agentSpiffeId(trustDomain, agent.tenant, agent.name);

  function bar(agent: Agent, rejection: PeerRejection, correlationId: string | undefined): ConnectError {
    if (!isBarred(agent)) {
      barred.set(agent.id, {
        revision: agent.revision,
        until: deps.clock.now() + options.circuitBreaker.identityMismatchHoldMs,
      });
      mismatchCounter.add(1);
      log.warn(
        { agentId: agent.id, endpoint: agent.endpoint, expected: rejection.expected, reason: rejection.reason },
        "agent barred from routing: its endpoint did not present its registered SPIFFE ID",
      );
      try {
        deps.audit?.append({
          actor: "system",
          action: "routing.identity_mismatch",
          tenant: agent.tenant,
          resource: `agent/${agent.id}`,
          outcome: "denied",
          details: { endpoint: agent.endpoint, expected: rejection.expected, reason: rejection.reason.slice(0, 300) },
          correlationId,
        });
      } catch (err) {
        log.error({ err }, "audit append failed");
      }
    }
    return new ConnectError(
      `agent ${agent.name} (${agent.id}) was not called: its endpoint did not present ${rejection.expected}`,
      Code.Unavailable,
    );
  }
  const selector = createAgentSelector(
    {
      agents: deps.agents,
      stats,
      breakers,
      clock: deps.clock,
      random,
      onListed: (agents) => pool.touch(agents.map((a) => a.endpoint)),
      isBarred,
    },
    options,
  );
  const idempotentCaps = new Set(options.idempotentCapabilities);

  function route(
    tenant: string,
    capability: string,
    constraints: SelectionConstraints,
    avoid?: ReadonlySet<string>,
  ): Selection {
    const sel = selector.select(tenant, capability, constraints, avoid);
    if (!sel) throw unavailable(`no live agent offers capability "${capability}"`);
    return sel;
  }

  function invocation(p: InvokeParams, hopDeadline: number, attempt: number): Invocation {
    return create(InvocationSchema, {
      capability: p.capability,
      tenant: p.tenant,
      payload: p.payload,
      contentType: p.contentType,
      deadline: timestampFromMs(hopDeadline),
      traceparent: p.traceparent ?? "",
      tracestate: p.tracestate ?? "",
      requestId: p.requestId ?? "",
      attempt,
    });
  }

  function metadata(p: InvokeParams): Record<string, string> {
    // The Egress Guard's pre-send hook reads whose data this is (and removes the override).
    const md: Record<string, string> = { [TENANT_HEADER]: p.tenant };
    if (p.override) md[OVERRIDE_HEADER] = p.override;
    if (p.traceparent) md.traceparent = p.traceparent;
    if (p.tracestate) md.tracestate = p.tracestate;
    if (p.requestId) md["x-request-id"] = p.requestId;
    return md;
  }

  /**
   * Runs one attempt on `sel.agent` inside its circuit breaker. The hop's deadline is the
   * caller's deadline or the per-hop cap, whichever is sooner: never longer than the caller's.
   */
  async function attempt<T>(
    sel: Selection,
    deadlineAt: number,
    signal: AbortSignal,
    call: (client: AgentClient, hop: AgentCallOptions) => Promise<T>,
    md: Record<string, string>,
    correlationId?: string,
  ): Promise<T> {
    const agent = sel.agent;
    const expectedId = expectedIdOf(agent);
    const end = stats.begin(agent.id);
    const started = performance.now();
    const hopDeadline = Math.min(deadlineAt, deps.clock.now() + options.timeouts.perHopMaxMs);
    try {
      const client = pool.get(agent.endpoint, expectedId);
      // A call that had to open the connection measures the handshake, not the agent: counting it
      // would let one cold start starve a fast agent until its EWMA decays.
      const warm = client.connected();
      const value = await breakers
        .get(agent.id)
        .execute(() => call(client, { deadline: hopDeadline, headers: { ...md }, signal }));
      end({ ok: true, latencyMs: warm ? performance.now() - started : undefined });
      attemptsCounter.add(1, "ok");
      return value;
    } catch (e) {
      const rejection = pool.rejection(agent.endpoint, expectedId);
      if (rejection) {
        // The handshake failed before any request byte was sent: the call reached no one. Never
        // retried on this agent; another agent offering the capability may still answer.
        end({ ok: false, latencyMs: performance.now() - started });
        attemptsCounter.add(1, "identity_mismatch");
        pool.drop(agent.endpoint, expectedId);
        throw new AttemptFailureError({
          error: bar(agent, rejection, correlationId),
          delivered: false,
          impostor: true,
        });
      }
      const failure = classify(e);
      // A call we cancelled ourselves (hedge lost, caller left) says nothing about the agent.
      const cancelled = signal.aborted && failure.error.code === Code.Canceled;
      end({ ok: cancelled, latencyMs: performance.now() - started });
      attemptsCounter.add(1, cancelled ? "cancelled" : failure.delivered ? "error" : "undelivered");
      throw new AttemptFailureError(failure);
    }
  }

  /**
   * The retry loop shared by unary and streaming calls. Undelivered calls are re-routed at once
   * (bounded by maxReroutes, outside the budget: they put no load on any agent); delivered ones
   * are retried only when idempotent, with full-jitter backoff, within maxAttempts, the retry
   * budget and the caller's deadline.
   */
  async function withRetries<T>(
    p: InvokeParams,
    run: (sel: Selection, attemptNo: number, deadlineAt: number, tried: Set<string>) => Promise<T>,
  ): Promise<{ value: T; attempts: number }> {
    const deadlineAt = deps.clock.now() + (p.timeoutMs ?? options.timeouts.defaultDeadlineMs);
    const idempotent = p.idempotent || idempotentCaps.has(p.capability);
    const tried = new Set<string>();
    // Unlike `tried` (a preference), these are never picked again in this call.
    const impostors: string[] = [];
    budget.recordRequest();
    let attempts = 0;
    let delivered = 0;
    let reroutes = 0;
    let last: AttemptFailure | undefined;
    for (;;) {
      if (p.signal.aborted) throw callerGone(p.signal);
      if (deadlineAt - deps.clock.now() < options.timeouts.minAttemptMs) {
        throw last?.error ?? deadlineExceeded("deadline exceeded before an agent could be called");
      }
      const constraints =
        impostors.length === 0
          ? p.constraints
          : { ...p.constraints, excludeAgentIds: [...(p.constraints.excludeAgentIds ?? []), ...impostors] };
      const sel = selector.select(p.tenant, p.capability, constraints, tried);
      if (!sel) throw last?.error ?? unavailable(`no live agent offers capability "${p.capability}"`);
      attempts++;
      try {
        return { value: await run(sel, attempts, deadlineAt, tried), attempts };
      } catch (e) {
        const failure = classify(e);
        last = failure;
        tried.add(sel.agent.id);
        if (failure.impostor) impostors.push(sel.agent.id);
        if (p.signal.aborted) throw callerGone(p.signal);
        if (!failure.delivered) {
          if (reroutes++ >= options.retry.maxReroutes) throw failure.error;
          log.debug({ agentId: sel.agent.id, reason: failure.error.rawMessage }, "re-routing an undelivered call");
          continue;
        }
        delivered++;
        if (!idempotent || !RETRYABLE_CODES.has(failure.error.code) || delivered >= options.retry.maxAttempts)
          throw failure.error;
        if (!budget.tryRetry()) {
          budgetCounter.add(1);
          throw failure.error;
        }
        // Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").
        const delay = random() * Math.min(options.retry.maxDelayMs, options.retry.baseDelayMs * 2 ** (delivered - 1));
        if (deadlineAt - deps.clock.now() - delay < options.timeouts.minAttemptMs) throw failure.error;
        retriesCounter.add(1, { kind: "retry" });
        try {
          await deps.clock.sleep(delay, p.signal);
        } catch {
          throw callerGone(p.signal);
        }
      }
    }
  }

  /** One unary round: the attempt, plus a hedge on another agent when it straggles. */
  async function unaryRound(
    p: InvokeParams,
    sel: Selection,
    attemptNo: number,
    deadlineAt: number,
    tried: Set<string>,
    md: Record<string, string>,
  ) {
    const one = (s: Selection, n: number, signal: AbortSignal) =>
      attempt(
        s,
        deadlineAt,
        signal,
        (client, hop) =>
          client.handle(create(HandleRequestSchema, { invocation: invocation(p, hop.deadline, n) }), hop),
        md,
        p.requestId,
      ).then((res) => ({ res, agent: s.agent }));
    const hedgeable = options.hedging.enabled && (p.idempotent || idempotentCaps.has(p.capability));
    if (!hedgeable) return one(sel, attemptNo, p.signal);

    const first = new AbortController();
    const second = new AbortController();
    const onAbort = (): void => {
      first.abort();
      second.abort();
    };
    p.signal.addEventListener("abort", onAbort, { once: true });
    try {
      const primary = one(sel, attemptNo, first.signal);
      const timer = new AbortController();
      const straggling = await Promise.race([
        primary.then(
          () => false,
          () => false,
        ),
        deps.clock.sleep(options.hedging.delayMs, timer.signal).then(
          () => true,
          () => false,
        ),
      ]);
      timer.abort();
      if (!straggling || deadlineAt - deps.clock.now() < options.timeouts.minAttemptMs) return await primary;
      const other = selector.select(p.tenant, p.capability, p.constraints, new Set([...tried, sel.agent.id]));
      if (!other || other.agent.id === sel.agent.id || !budget.tryRetry()) return await primary;
      retriesCounter.add(1, { kind: "hedge" });
      const hedge = one(other, attemptNo + 1, second.signal);
      try {
        const winner = await Promise.any([primary, hedge]);
        (winner.agent.id === sel.agent.id ? second : first).abort();
        return winner;
      } catch (e) {
        const errors = (e as AggregateError).errors;
        throw errors[errors.length - 1];
      }
    } finally {
      p.signal.removeEventListener("abort", onAbort);
    }
  }

  // Federation: the call goes to a peer kernel only when the remote side says so (keep this narrow).
  const remoteFor = (p: Pick<InvokeParams, "tenant" | "capability" | "constraints" | "hops">) =>
    deps.remote?.pick(p, () => selector.select(p.tenant, p.capability, p.constraints) !== undefined);

  return {
    route: (tenant, capability, constraints) =>
      remoteFor({ tenant, capability, constraints })?.selection ?? route(tenant, capability, constraints),

    async invoke(p) {
      const remote = remoteFor(p);
      if (remote) return remote.invoke(p);
      const started = performance.now();
      const md = metadata(p);
      let outcome = INVOKE_ERROR;
      try {
        const { value, attempts } = await withRetries(p, (sel, n, deadlineAt, tried) =>
          unaryRound(p, sel, n, deadlineAt, tried, md),
        );
        outcome = INVOKE_OK;
        return { payload: value.res.payload, contentType: value.res.contentType, agent: value.agent, attempts };
      } finally {
        duration.record(performance.now() - started, outcome);
      }
    },

    async *invokeStream(p) {
      const remote = remoteFor(p);
      if (remote) {
        yield* remote.invokeStream(p);
        return;
      }
      const md = metadata(p);
      const controller = new AbortController();
      const onAbort = (): void => controller.abort();
      p.signal.addEventListener("abort", onAbort, { once: true });
      try {
        const { value } = await withRetries(p, (sel, n, deadlineAt) =>
          attempt(
            sel,
            deadlineAt,
            controller.signal,
            async (client, hop) => {
              const call = client.handleStream(
                create(HandleStreamRequestSchema, { invocation: invocation(p, hop.deadline, n) }),
                hop,
              );
              const it = call[Symbol.asyncIterator]();
              // The attempt counts as answered once the first chunk (or the end) arrives; after
              // that the caller has data and a retry would duplicate it.
              const first = await it.next();
              return { call, it, first, agent: sel.agent };
            },
            md,
            p.requestId,
          ),
        );
        const { it, agent } = value;
        try {
          for (let r = value.first; !r.done; r = await it.next()) {
            yield { payload: r.value.payload, contentType: r.value.contentType, agent };
          }
        } catch (e) {
          throw classify(e).error;
        } finally {
          value.call.cancel();
        }
      } finally {
        p.signal.removeEventListener("abort", onAbort);
      }
    },

    circuitState: (agentId) => breakers.state(agentId),

    forgetAgent(agent) {
      barred.delete(agent.id);
      stats.forget(agent.id);
      breakers.forget(agent.id);
      try {
        pool.forget(agent.endpoint);
      } catch {
        // An endpoint that never parsed never had a channel.
      }
    },

    close: () => pool.close(),
  };
}
