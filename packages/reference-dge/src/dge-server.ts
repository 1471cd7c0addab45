import { createServer, type Http2Server, type ServerHttp2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { type Clock, ConfigError, readInt, readSection, readString } from "../../../src/common/index.js";
import type { Logger } from "pino";
import { DataGovernanceService } from "../../../gen/nops/dge/v1/dge_pb.js";
import { resolveDgePoliciesOptions, type DgePoliciesOptions } from "./dge-policies.js";
import { createDgeService } from "./dge-service.js";
import {
  createClassifyPool,
  DEFAULT_CLASSIFY_BUDGET_MS,
  DEFAULT_CLASSIFY_MAX_QUEUE,
  DEFAULT_CLASSIFY_IDLE_THREAD_MS,
  DEFAULT_CLASSIFY_THREADS,
} from "./classify-pool.js";

/** Options of the reference DGE server (`nops-kernel dge`). */
export interface DgeServerOptions {
  /** Address to bind; loopback unless the DGE must be reached from elsewhere. @default "127.0.0.1" */
  host: string;
  /** Port; 0 picks a free one. @default 7600 */
  port: number;
  /** HMAC keys by id (each at least 32 characters); responses are signed with `signingKeyId`. */
  keys: Record<string, string>;
  /** Key id that signs responses; must be in `keys`. @default the first key id */
  signingKeyId: string;
  /** Largest request message, bytes (connect-node's default is ~4 GiB). @default 4194304 */
  maxRequestBytes: number;
  /**
   * Most worker threads classifying requests off the event loop. @default one per core (os.availableParallelism())
   */
  classifyThreads: number;
  /**
   * Threads that run even while the DGE is idle; the others start while requests wait for a thread. Each holds
   * its own V8 heap, so fewer save memory, but a request that arrives during a burst may then wait for a thread
   * to boot (seconds on a loaded machine). @default classifyThreads (all warm)
   */
  classifyWarmThreads: number;
  /** How long a thread beyond the warm ones may stay idle before it exits, ms. @default 30000 */
  classifyIdleThreadMs: number;
  /**
   * Time budget of one classification, ms, waiting included; past it the worker running it is terminated and
   * replaced and the answer is RESOURCE_EXHAUSTED (the kernel's guard: no verdict, the call is refused). @default 3000
   */
  classifyBudgetMs: number;
  /** Classifications waiting for a thread at most; more are refused with RESOURCE_EXHAUSTED. @default 1024 */
  classifyMaxQueue: number;
  /** Per-tier and per-tenant policies. @default every tier allows D1 (no PII) to any destination */
  policies: DgePoliciesOptions;
}

/** Default bind address. */
export const DEFAULT_DGE_HOST = "127.0.0.1";
/** Default port. */
export const DEFAULT_DGE_PORT = 7600;
/** Default request size cap: 4 MiB. */
export const DEFAULT_DGE_MAX_REQUEST_BYTES = 4 * 1024 * 1024;
/** Shortest HMAC key accepted (32 bytes of entropy as text, RFC 2104 §3: at least the hash length). */
export const MIN_DGE_KEY_LENGTH = 32;

/** Validates the DGE server section; throws ConfigError naming the field. */
export function resolveDgeServerOptions(input: unknown, path = "dge.server"): DgeServerOptions {
  const s = readSection(input, path, {
    host: "",
    port: 0,
    keys: {},
    signingKeyId: "",
    maxRequestBytes: 0,
    classifyThreads: 0,
    classifyWarmThreads: 0,
    classifyIdleThreadMs: 0,
    classifyBudgetMs: 0,
    classifyMaxQueue: 0,
    policies: {},
  });
  const keysIn = s.keys;
  if (typeof keysIn !== "object" || keysIn === null || Array.isArray(keysIn) || Object.keys(keysIn).length === 0) {
    throw new ConfigError(`${path}.keys must map at least one key id to a secret`);
  }
  const keys: Record<string, string> = {};
  for (const [id, secret] of Object.entries(keysIn as Record<string, unknown>)) {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(id))
      throw new ConfigError(`${path}.keys: key id ${JSON.stringify(id)} must match [A-Za-z0-9._-]{1,64}`);
    if (typeof secret !== "string" || secret.length < MIN_DGE_KEY_LENGTH) {
      throw new ConfigError(`${path}.keys.${id} must be a string of at least ${MIN_DGE_KEY_LENGTH} characters`);
    }
    keys[id] = secret;
  }
  const signingKeyId = readString(s, "signingKeyId", path, Object.keys(keys)[0] ?? "", { oneOf: Object.keys(keys) });
  return {
    host: readString(s, "host", path, DEFAULT_DGE_HOST, { nonEmpty: true }),
    port: readInt(s, "port", path, DEFAULT_DGE_PORT, 0, 65_535),
    keys,
    signingKeyId,
    maxRequestBytes: readInt(s, "maxRequestBytes", path, DEFAULT_DGE_MAX_REQUEST_BYTES, 1024, 64 * 1024 * 1024),
    classifyThreads: readInt(s, "classifyThreads", path, DEFAULT_CLASSIFY_THREADS, 1, 256),
    classifyWarmThreads: readInt(s, "classifyWarmThreads", path, DEFAULT_CLASSIFY_THREADS, 1, 256),
    classifyIdleThreadMs: readInt(s, "classifyIdleThreadMs", path, DEFAULT_CLASSIFY_IDLE_THREAD_MS, 100, 86_400_000),
    classifyBudgetMs: readInt(s, "classifyBudgetMs", path, DEFAULT_CLASSIFY_BUDGET_MS, 10, 600_000),
    classifyMaxQueue: readInt(s, "classifyMaxQueue", path, DEFAULT_CLASSIFY_MAX_QUEUE, 0, 1_000_000),
    policies: resolveDgePoliciesOptions(s.policies, `${path}.policies`),
  };
}

/** What the reference DGE server needs. */
export interface DgeServerDeps {
  clock: Clock;
  logger: Logger;
}

/** A running reference DGE. */
export interface DgeServer {
  /** Base URL, e.g. "http://127.0.0.1:7600" (h2c: gRPC and Connect over HTTP/2). */
  url: string;
  /** Classification worker threads running now (terminated ones are replaced). */
  classifyThreadCount(): number;
  /** Classifications waiting for a thread or running on one (a request whose caller left runs to its end). */
  classifyInFlight(): number;
  /** Classification threads started since the server started (warm, burst and replacement threads). */
  classifyThreadStarts(): number;
  /** Replaces the policies (clients see the change once their cached copy expires or is invalidated). */
  setPolicies(policies: DgePoliciesOptions): void;
  /** Stops accepting calls and closes open sessions. */
  close(): Promise<void>;
}

/** Starts the reference DGE: DataGovernanceService over h2c via connect-node (gRPC and Connect clients). */
export async function startDgeServer(deps: DgeServerDeps, options: DgeServerOptions): Promise<DgeServer> {
  const logger = deps.logger.child({ component: "dge-server" });
  let policies = options.policies;
  const secret = options.keys[options.signingKeyId];
  if (secret === undefined) throw new ConfigError(`dge.server.signingKeyId ${options.signingKeyId} is not in keys`);
  const pool = createClassifyPool(
    { logger },
    {
      threads: options.classifyThreads,
      warmThreads: options.classifyWarmThreads,
      idleThreadMs: options.classifyIdleThreadMs,
      budgetMs: options.classifyBudgetMs,
      maxQueue: options.classifyMaxQueue,
    },
  );
  try {
    await pool.warm();
  } catch (err) {
    await pool.close();
    throw err;
  }
  const service = createDgeService({
    clock: deps.clock,
    logger,
    signingKey: { id: options.signingKeyId, secret },
    policies: () => policies,
    maxDataChars: options.maxRequestBytes,
    detect: (text, signal) => pool.detect(text, signal),
  });
  const handler = connectNodeAdapter({
    routes: (router) => router.service(DataGovernanceService, service),
    readMaxBytes: options.maxRequestBytes,
  });
  const server: Http2Server = createServer(handler);
  const sessions = new Set<ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => void pool.close().finally(() => reject(err));
    server.once("error", onError);
    server.listen(options.port, options.host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  const url = `http://${host}:${addr.port}`;
  logger.info({ url }, "reference DGE listening");
  return {
    url,
    classifyThreadCount: () => pool.threadCount(),
    classifyInFlight: () => pool.inFlight(),
    classifyThreadStarts: () => pool.threadStarts(),
    setPolicies(p) {
      policies = p;
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sessions) s.close();
      // Stopping the workers ends classifications in flight (answered UNAVAILABLE), so open streams finish now
      // instead of after their budget.
      await pool.close();
      await closed;
    },
  };
}
