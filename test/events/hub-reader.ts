import { fromBinary } from "@bufbuild/protobuf";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { EventEnvelopeSchema, type EventEnvelope } from "../../gen/nops/events/v1/envelope_pb.js";
import type { NatsTopology } from "../helpers/nats-servers.js";

/** Every envelope in a stream of the given server, in stream order (read message by message). */
export async function readStreamEnvelopes(
  url: string | string[],
  user: { user: string; pass: string },
  stream: string,
): Promise<EventEnvelope[]> {
  const nc = await connect({ servers: url, user: user.user, pass: user.pass });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(stream);
    const out: EventEnvelope[] = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq });
      if (m) out.push(fromBinary(EventEnvelopeSchema, m.data));
    }
    return out;
  } finally {
    await nc.close();
  }
}

/** Message count of a stream on the hub (0 when it does not exist yet or the hub is down). */
export async function hubStreamCount(topo: NatsTopology, stream: string): Promise<number> {
  try {
    const nc = await connect({
      servers: topo.hub.url,
      user: topo.hubUser.user,
      pass: topo.hubUser.pass,
      reconnect: false,
    });
    try {
      const jsm = await jetstreamManager(nc);
      return (await jsm.streams.info(stream)).state.messages;
    } finally {
      await nc.close();
    }
  } catch {
    return 0;
  }
}

/** Counts occurrences of each event id. */
export function countIds(envelopes: readonly EventEnvelope[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const e of envelopes) counts.set(e.id, (counts.get(e.id) ?? 0) + 1);
  return counts;
}
