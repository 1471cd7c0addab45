// A summarizer agent: joins the kernel, serves "summarize" (unary) and "summarize.stream"
// (one sentence per chunk), and, to show the round trip, asks the kernel once to route a request
// to whoever offers "summarize" (itself) and publishes an event about it. Ctrl-C or SIGTERM drains.
import { fileURLToPath } from "node:url";
import { createAgent, HandlerError, Code } from "@nops/agent-sdk";
import { summarize } from "./summarize.js";

const env = process.env;
const decode = (b: Uint8Array) => new TextDecoder().decode(b);

// Input: {"text": "...", "sentences": 2} or plain text.
function parse(payload: Uint8Array): { text: string; sentences: number } {
  const raw = decode(payload);
  try {
    const j = JSON.parse(raw) as { text?: unknown; sentences?: unknown };
    if (typeof j.text !== "string") throw new HandlerError(Code.InvalidArgument, "text: must be a string");
    return { text: j.text, sentences: typeof j.sentences === "number" ? j.sentences : 2 };
  } catch (e) {
    if (e instanceof HandlerError) throw e;
    return { text: raw, sentences: 2 };
  }
}

const agent = createAgent({
  tenant: env.NOPS_TENANT ?? "demo",
  name: env.NOPS_AGENT_NAME ?? "summarizer",
  version: "1.0.0",
  // `npm start` in the repository root: gRPC on 50051, dev identity under ./data/dev-identity.
  kernelUrl: env.NOPS_KERNEL_URL ?? "https://localhost:50051",
  identity: {
    type: "dev",
    dir: env.NOPS_DEV_IDENTITY_DIR ?? fileURLToPath(new URL("../../../data/dev-identity", import.meta.url)),
  },
  capabilities: {
    summarize: {
      attributes: { method: "extractive", language: "en" },
      async handle(payload) {
        const { text, sentences } = parse(payload);
        return {
          payload: JSON.stringify({ summary: summarize(text, sentences).join(" ") }),
          contentType: "application/json",
        };
      },
    },
    "summarize.stream": {
      async *handleStream(payload, ctx) {
        const { text, sentences } = parse(payload);
        for (const s of summarize(text, sentences)) {
          if (ctx.signal.aborted) return;
          yield s + "\n";
        }
      },
    },
  },
  logger: {
    info: (msg, f) => console.log(`[agent] ${msg}`, f ?? ""),
    warn: (msg, f) => console.warn(`[agent] ${msg}`, f ?? ""),
    error: (msg, f) => console.error(`[agent] ${msg}`, f ?? ""),
  },
});

agent.on("drained", ({ deregistered }) => console.log(`summarizer drained (deregistered: ${deregistered})`));
await agent.start();
console.log(`summarizer ready: agent ${agent.id} at ${agent.endpoint}`);

if (env.NOPS_EXAMPLE_DEMO !== "0") {
  const text =
    "The kernel knows which agents exist and whether they are alive. " +
    "Agents register once and then send heartbeats at the interval the kernel asks for. " +
    "When the kernel routes a request, it picks a live agent offering the capability. " +
    "Nothing leaves the edge without the data-governance engine's verdict.";
  const res = await agent.invoke("summarize", JSON.stringify({ text, sentences: 2 }), { timeoutMs: 10_000 });
  const { summary } = JSON.parse(decode(res.payload)) as { summary: string };
  console.log(`summary (via the kernel, answered by ${res.agentName}): ${summary}`);
  const published = await agent.publish("summaries.created.v1", JSON.stringify({ chars: summary.length }), {
    payloadType: "application/json",
  });
  console.log(`published event ${published.eventId}`);
}
