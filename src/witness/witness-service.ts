import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fromBinary } from "@bufbuild/protobuf";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { DeliverPolicy, jetstream, type ConsumerMessages } from "@nats-io/jetstream";
import type { Logger } from "../telemetry/index.js";
import { eventSubject } from "../store/index.js";
import { CHECKPOINT_EVENT_TYPE } from "../audit/index.js";
import { EventEnvelopeSchema, Origin } from "../../gen/nops/events/v1/envelope_pb.js";
import { AuditCheckpointIssuedSchema } from "../../gen/nops/events/v1/audit_events_pb.js";
import { createWitness, type Witness } from "./witness.js";
import type { WitnessOptions } from "./witness-options.js";

/** A running witness: the HTTP endpoint and one hub consumer per edge. */
export interface RunningWitness {
  readonly witness: Witness;
  /** Base URL of the HTTP endpoint, e.g. http://127.0.0.1:8090. */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Serves the held checkpoints: GET /v1/checkpoints/<edge> answers the signed note (text/plain),
 * GET /v1/checkpoints the list (JSON). `nops-kernel audit verify --checkpoint <url>` reads the former.
 */
function serveCheckpoints(witness: Witness, host: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://witness");
    if (req.method !== "GET") {
      res.writeHead(405, { allow: "GET" }).end();
      return;
    }
    if (url.pathname === "/v1/checkpoints") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(witness.all()));
      return;
    }
    const m = /^\/v1\/checkpoints\/([a-z0-9][a-z0-9_-]{0,62})$/.exec(url.pathname);
    const held = m && witness.latest(m[1]!);
    if (!held) {
      res.writeHead(404, { "content-type": "text/plain" }).end("no checkpoint held for this edge\n");
      return;
    }
    res.writeHead(200, { "content-type": "text/plain; charset=utf-8" }).end(held.note);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve(server));
  });
}

/**
 * Starts the witness: reads every edge's audit.checkpoint.issued.v1 events from its hub stream
 * (an ordered consumer resuming after the last stream sequence it kept), checks each one and
 * keeps the latest good checkpoint per edge, and serves them over HTTP.
 */
export async function startWitness(options: WitnessOptions, deps: { logger: Logger }): Promise<RunningWitness> {
  const { logger } = deps;
  const witness = createWitness({ stateFile: options.stateFile, edges: options.edges });
  const server = await serveCheckpoints(witness, options.http.host, options.http.port);
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: options.nats.url,
      ...(options.nats.user ? { user: options.nats.user, pass: options.nats.pass } : {}),
      maxReconnectAttempts: -1,
    });
  } catch (e) {
    server.close();
    throw e;
  }
  const js = jetstream(nc);
  let closing = false;
  const running = new Set<ConsumerMessages>();
  const wake = new Set<() => void>();
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        wake.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      wake.add(done);
    });

  const follow = async (edge: string): Promise<void> => {
    const cfg = options.edges[edge]!;
    const log = logger.child({ edge });
    while (!closing) {
      try {
        const from = (witness.latest(edge)?.streamSeq ?? 0) + 1;
        const consumer = await js.consumers.get(cfg.stream, {
          filter_subjects: eventSubject(cfg.tenant, CHECKPOINT_EVENT_TYPE),
          deliver_policy: DeliverPolicy.StartSequence,
          opt_start_seq: from,
        });
        const messages = await consumer.consume();
        running.add(messages);
        try {
          for await (const m of messages) {
            const envelope = fromBinary(EventEnvelopeSchema, m.data);
            if (
              envelope.source !== edge ||
              envelope.type !== CHECKPOINT_EVENT_TYPE ||
              envelope.origin !== Origin.KERNEL
            ) {
              log.warn({ seq: m.seq, source: envelope.source, type: envelope.type }, "not a checkpoint of this edge");
              continue;
            }
            const event = fromBinary(AuditCheckpointIssuedSchema, envelope.payload);
            const verdict = witness.submit(edge, {
              checkpoint: event.checkpoint,
              previousTreeSize: Number(event.previousTreeSize),
              consistencyProof: event.consistencyProof,
              streamSeq: m.seq,
            });
            if (verdict.accepted) log.info({ treeSize: verdict.checkpoint.size, seq: m.seq }, "checkpoint witnessed");
            else log.error({ seq: m.seq, reason: verdict.reason }, "checkpoint REFUSED");
          }
        } finally {
          running.delete(messages);
        }
      } catch (e) {
        if (closing) return;
        log.warn({ err: e }, "cannot read the edge's hub stream; retrying");
      }
      if (!closing) await pause(options.retryMs);
    }
  };
  const loops = Object.keys(options.edges).map((edge) => follow(edge));

  const addr = server.address() as AddressInfo;
  return {
    witness,
    url: `http://${addr.address.includes(":") ? `[${addr.address}]` : addr.address}:${addr.port}`,
    async close() {
      closing = true;
      for (const w of [...wake]) w();
      for (const m of running) m.stop();
      await Promise.allSettled(loops);
      await nc.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
