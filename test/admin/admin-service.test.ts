import test from "ava";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { toGetStatusResponse } from "../../src/admin/admin-service.js";
import type { StatusReport } from "../../src/admin/status-matrix.js";
import { Readiness } from "../../gen/nops/kernel/v1/admin_pb.js";

const report: StatusReport = { status: "ready", ready: true, dependencies: [], capabilities: [], checkedAt: 1000 };

test("GetStatus reports the event bus links: lag, last sync and refusals", (t) => {
  const res = toGetStatusResponse(report, "1.2.3", [
    { name: "commands", lagMessages: 12, lagSeconds: 3.5, lastSyncAt: 5000, rejected: 2 },
    { name: "federation-in", lagMessages: 0, lagSeconds: 0, rejected: 0 },
  ]);
  t.is(res.readiness, Readiness.READY);
  t.is(res.busLinks.length, 2);
  const [c, f] = res.busLinks;
  t.is(c!.name, "commands");
  t.is(c!.lagMessages, 12n);
  t.is(c!.lagSeconds, 3.5);
  t.is(timestampMs(c!.lastSync!), 5000);
  t.is(c!.rejected, 2n);
  t.is(f!.lastSync, undefined, "never synced: unset");
});

test("GetStatus without an event bus has no links", (t) => {
  t.deepEqual(toGetStatusResponse(report, "1.2.3").busLinks, []);
});
