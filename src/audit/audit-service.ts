import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { failedPrecondition, invalidArgument } from "../common/index.js";
import {
  AuditLogEntrySchema,
  GetCheckpointResponseSchema,
  GetConsistencyProofResponseSchema,
  GetInclusionProofResponseSchema,
  ListEntriesResponseSchema,
  type AuditService,
} from "../../gen/nops/kernel/v1/audit_pb.js";
import type { AuditLog } from "./audit-log.js";
import type { Checkpointer } from "./checkpointer.js";
import { leafHash } from "./merkle.js";

/** Entries one ListEntries call returns at most. */
export const MAX_ENTRIES_PER_CALL = 1000;

/** What the audit service needs. */
export interface AuditServiceDeps {
  audit: AuditLog;
  checkpointer: Checkpointer;
}

function size(value: bigint, field: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument(field, "is too large");
  return Number(value);
}

/** AuditService: checkpoints, RFC 6962 proofs and entries of the verifiable audit log. */
export function createAuditService(deps: AuditServiceDeps): ServiceImpl<typeof AuditService> {
  const { audit, checkpointer } = deps;
  const treeSize = () => audit.head().size;
  return {
    async getCheckpoint(req) {
      const latest = req.fresh
        ? await checkpointer.issue()
        : (audit.latestCheckpoint() ?? (await checkpointer.issue()));
      return create(GetCheckpointResponseSchema, {
        checkpoint: latest.note,
        origin: latest.origin,
        treeSize: BigInt(latest.size),
        rootHash: latest.root,
      });
    },
    getInclusionProof(req) {
      const index = size(req.leafIndex, "leaf_index");
      const n = size(req.treeSize, "tree_size");
      if (index >= n) throw invalidArgument("leaf_index", `must be below tree_size (${n})`);
      const current = treeSize();
      if (n > current) throw failedPrecondition(`tree_size ${n} is beyond the tree size ${current}`);
      const [entry] = audit.entries(index, index + 1);
      if (!entry) throw failedPrecondition(`entry ${index} is not in the log`);
      return create(GetInclusionProofResponseSchema, {
        leafIndex: req.leafIndex,
        treeSize: req.treeSize,
        leafHash: leafHash(entry.leaf),
        hashes: audit.inclusionProof(index, n),
      });
    },
    getConsistencyProof(req) {
      const first = size(req.first, "first");
      const second = size(req.second, "second");
      if (first > second) throw invalidArgument("first", `must not exceed second (${second})`);
      const current = treeSize();
      if (second > current) throw failedPrecondition(`second ${second} is beyond the tree size ${current}`);
      return create(GetConsistencyProofResponseSchema, {
        first: req.first,
        second: req.second,
        hashes: audit.consistencyProof(first, second),
      });
    },
    listEntries(req) {
      const start = size(req.start, "start");
      const end = size(req.end, "end");
      if (end < start) throw invalidArgument("end", `must not be below start (${start})`);
      const last = Math.min(end, start + MAX_ENTRIES_PER_CALL, treeSize());
      return create(ListEntriesResponseSchema, {
        entries: audit.entries(start, last).map((e) =>
          create(AuditLogEntrySchema, {
            index: BigInt(e.index),
            at: timestampFromMs(e.at),
            actor: e.actor,
            action: e.action,
            tenant: e.tenant,
            resource: e.resource,
            outcome: e.outcome,
            detailsJson: JSON.stringify(e.details),
            correlationId: e.correlationId,
            leafData: e.leaf,
          }),
        ),
      });
    },
  };
}
