import { join } from "node:path";
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { AuditService } from "../../gen/nops/kernel/v1/audit_pb.js";
import { fileVerifierKeys, parseVerifierKey } from "../../src/audit/signer.js";
import { openCheckpoint } from "../../src/audit/checkpoint.js";
import { BOTH, startTestKernel } from "../helpers/kernel.js";
import { checkConsistency, checkInclusion, mth, refLeafHash } from "./rfc6962-reference.js";

for (const transport of BOTH) {
  test(`audit service - checkpoints, entries and proofs check out with an independent verifier over ${transport}`, async (t) => {
    const k = await startTestKernel(t, { audit: { checkpointIntervalMs: 0 } });
    const registry = k.client(AgentRegistryService, transport);
    const audit = k.client(AuditService, transport);
    for (let i = 0; i < 5; i++)
      await registry.registerAgent({ tenant: "acme", name: `n${i}`, version: "1", endpoint: `127.0.0.1:${6000 + i}` });
    const c5 = await audit.getCheckpoint({ fresh: true });
    const keys = fileVerifierKeys({ path: join(`${k.dir}.keys`, "audit-checkpoint.key"), name: c5.origin }).map((key) =>
      parseVerifierKey(key),
    );
    const opened = openCheckpoint(c5.checkpoint, keys, "nops.kernel/edge-local/audit");
    t.is(BigInt(opened.size), c5.treeSize);
    t.deepEqual(Buffer.from(opened.root), Buffer.from(c5.rootHash));
    // Without fresh, the newest signed checkpoint comes back even when the log grew since.
    await registry.registerAgent({ tenant: "acme", name: "n5", version: "1", endpoint: "127.0.0.1:6005" });
    t.is((await audit.getCheckpoint({})).treeSize, c5.treeSize);
    const c6 = await audit.getCheckpoint({ fresh: true });
    t.true(c6.treeSize > c5.treeSize);

    const { entries } = await audit.listEntries({ start: 0n, end: c6.treeSize + 10n });
    t.is(BigInt(entries.length), c6.treeSize);
    t.deepEqual(
      entries.map((e) => Number(e.index)),
      entries.map((_, i) => i),
    );
    t.true(entries.some((e) => e.action === "agent.register" && e.tenant === "acme"));
    const leaves = entries.map((e) => e.leafData);
    t.deepEqual(Buffer.from(mth(leaves.slice(0, Number(c5.treeSize)))), Buffer.from(c5.rootHash));
    t.deepEqual(Buffer.from(mth(leaves)), Buffer.from(c6.rootHash));
    for (let i = 0; i < leaves.length; i++) {
      const p = await audit.getInclusionProof({ leafIndex: BigInt(i), treeSize: c6.treeSize });
      t.deepEqual(Buffer.from(p.leafHash), refLeafHash(leaves[i]!));
      t.true(checkInclusion(i, Number(c6.treeSize), refLeafHash(leaves[i]!), p.hashes, c6.rootHash), `entry ${i}`);
    }
    const cp = await audit.getConsistencyProof({ first: c5.treeSize, second: c6.treeSize });
    t.true(checkConsistency(Number(c5.treeSize), Number(c6.treeSize), c5.rootHash, c6.rootHash, cp.hashes));

    const refused = async (p: Promise<unknown>, code: Code, message: RegExp) => {
      const err = await t.throwsAsync(p);
      t.true(err instanceof ConnectError);
      t.is((err as ConnectError).code, code, (err as ConnectError).message);
      t.regex((err as ConnectError).rawMessage, message);
    };
    await refused(audit.getInclusionProof({ leafIndex: 3n, treeSize: 3n }), Code.InvalidArgument, /^leaf_index: /);
    await refused(
      audit.getInclusionProof({ leafIndex: 0n, treeSize: c6.treeSize + 100n }),
      Code.FailedPrecondition,
      /beyond the tree size/,
    );
    await refused(audit.getConsistencyProof({ first: 4n, second: 3n }), Code.InvalidArgument, /^first: /);
    await refused(
      audit.getConsistencyProof({ first: 1n, second: c6.treeSize + 1n }),
      Code.FailedPrecondition,
      /beyond the tree size/,
    );
    await refused(audit.listEntries({ start: 5n, end: 2n }), Code.InvalidArgument, /^end: /);
    await refused(audit.listEntries({ start: 2n ** 60n, end: 2n ** 60n }), Code.InvalidArgument, /^start: /);
  });
}
