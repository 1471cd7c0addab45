import * as net from "node:net";
import test from "ava";
import {
  createConnectionGuard,
  DEFAULT_MAX_CONNECTIONS_UNBOUNDED,
  resolveMaxConnections,
} from "../../src/server/connection-guard.js";
import { descriptorLimit, openDescriptors } from "../../src/server/descriptor-usage.js";
import { waitFor } from "../helpers/processes.js";

test("connection guard - connections past the per-address and total budgets are reset at accept, and freed on close", async (t) => {
  const guard = createConnectionGuard({}, { maxConnections: 5, maxConnectionsPerIp: 3 });
  const server = net.createServer((socket) => {
    if (guard.admit(socket, "http")) socket.on("error", () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const open = (from: string) => {
    const s = net.connect({ port, host: "127.0.0.1", localAddress: from });
    s.on("error", () => undefined);
    return s;
  };
  const first = Array.from({ length: 5 }, () => open("127.0.0.1"));
  await waitFor(() => guard.stats().open + guard.stats().refused === 5, "all five accepted or refused", 5000);
  t.is(guard.stats().open, 3, "three from one address");
  t.is(guard.stats().refused, 2);
  // Another loopback source address has its own per-address budget, until the total is reached.
  const other = Array.from({ length: 3 }, () => open("127.0.0.2"));
  await waitFor(() => guard.stats().open + guard.stats().refused === 8, "the other address's connections", 5000);
  t.is(guard.stats().open, 5, "the total budget caps both addresses together");
  for (const s of [...first, ...other]) s.destroy();
  await waitFor(() => guard.stats().open === 0, "released on close", 5000);
  const again = open("127.0.0.1");
  await waitFor(() => guard.stats().open === 1, "a freed slot admits again", 5000);
  again.destroy();
});

test("connection guard - the total budget is derived from the descriptor limit when not configured", (t) => {
  t.is(resolveMaxConnections(100, 1024), 100);
  t.is(resolveMaxConnections(0, 1024), Math.floor((1024 - 64) * 0.8));
  t.is(resolveMaxConnections(0, 70), 16, "never below 16");
  t.is(resolveMaxConnections(0, Number.NaN), DEFAULT_MAX_CONNECTIONS_UNBOUNDED);
  // This machine is Linux: the readers answer.
  t.true((descriptorLimit() ?? 0) > 0);
  t.true((openDescriptors() ?? 0) > 0);
});
