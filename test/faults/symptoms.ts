// What an operator sees, read from a running test kernel the way the runbooks describe it:
// /readyz, /metrics, the degraded.mode.* events in the outbox and the log lines.
import { request } from "node:https";
import { fromBinary } from "@bufbuild/protobuf";
import Database from "better-sqlite3";
import {
  DegradedModeActivatedSchema,
  DegradedModeRecoveredSchema,
} from "../../gen/nops/events/v1/degraded_events_pb.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import type { TestKernel } from "../helpers/kernel.js";
import { parsePrometheusText, sample } from "../telemetry/prometheus-text.js";

/** The /readyz answer. */
export interface Readyz {
  code: number;
  body: {
    ready: boolean;
    status: string;
    dependencies: { name: string; state: string; detail?: string }[];
    capabilities: { name: string; mode: string; reason?: string }[];
  };
}

/** A kernel serving HTTPS: the CA that signed its certificate (the server name is localhost). */
export interface HttpsTrust {
  ca: string;
  /** A client SVID (PEM): an operator's, to see /readyz details on a kernel with real identity. */
  cert?: string;
  key?: string;
}

/** GET on the kernel's HTTP port: plain, or HTTPS trusting `tls.ca`. */
async function get(k: TestKernel, path: string, tls?: HttpsTrust): Promise<{ code: number; text: string }> {
  if (!tls) {
    const res = await fetch(`http://127.0.0.1:${k.kernel.httpPort}${path}`);
    return { code: res.status, text: await res.text() };
  }
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port: k.kernel.httpPort,
        path,
        ca: tls.ca,
        servername: "localhost",
        ...(tls.cert && tls.key ? { cert: tls.cert, key: tls.key } : {}),
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (text += d));
        res.on("end", () => resolve({ code: res.statusCode ?? 0, text }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

/** GET /readyz. */
export async function readyz(k: TestKernel, tls?: HttpsTrust): Promise<Readyz> {
  const res = await get(k, "/readyz", tls);
  return { code: res.code, body: JSON.parse(res.text) as Readyz["body"] };
}

/** One sample of GET /metrics (partial: the sum of samples whose labels include `labels`). */
export async function metric(
  k: TestKernel,
  name: string,
  labels: Record<string, string> = {},
  partial = false,
  tls?: HttpsTrust,
): Promise<number | undefined> {
  const { text } = await get(k, "/metrics", tls);
  return sample(parsePrometheusText(text), name, labels, partial);
}

/** A degraded.mode.* event recorded in the outbox. */
export interface ModeEvent {
  type: "activated" | "recovered";
  capability: string;
  dependency: string;
  mode: string;
}

/** Every degraded.mode.* event in the kernel's outbox, oldest first. */
export function modeEvents(k: TestKernel): ModeEvent[] {
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  try {
    const rows = db
      .prepare("SELECT type, envelope FROM outbox WHERE type LIKE 'degraded.mode.%' ORDER BY id")
      .all() as { type: string; envelope: Buffer }[];
    return rows.map((r) => {
      const payload = fromBinary(EventEnvelopeSchema, r.envelope).payload;
      const activated = r.type === "degraded.mode.activated.v1";
      const p = activated
        ? fromBinary(DegradedModeActivatedSchema, payload)
        : fromBinary(DegradedModeRecoveredSchema, payload);
      return {
        type: activated ? "activated" : "recovered",
        capability: p.capability,
        dependency: p.dependency,
        mode: p.mode,
      };
    });
  } finally {
    db.close();
  }
}

/** Log lines (parsed) whose msg is `msg`. */
export function logged(k: TestKernel, msg: string): Record<string, unknown>[] {
  return k.logs
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return {};
      }
    })
    .filter((l) => l.msg === msg);
}
