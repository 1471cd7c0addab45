import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "../../gen/nops/kernel/v1/admin_pb.js";
import {
  BusLinkStatusSchema,
  HubLinkStatusSchema,
  CapabilityMode,
  CapabilityStatusSchema,
  Criticality,
  DependencyState,
  DependencyStatusSchema,
  GetStatusResponseSchema,
  Readiness,
  type GetStatusResponse,
} from "../../gen/nops/kernel/v1/admin_pb.js";
import type { StatusMatrix, StatusReport } from "./status-matrix.js";

/** What the admin service needs. */
export interface AdminServiceDeps {
  matrix: StatusMatrix;
  /** The event bus's links (lag, last sync, refusals), when the bus runs. */
  busLinks?: () => BusLinkInit[];
  /** What the edge's hub link refused, when the kernel reads its leaf's log. */
  hubLink?: () => HubLinkInit;
  /** Kernel version reported in GetStatus. */
  version: string;
}

const READINESS = { ready: Readiness.READY, degraded: Readiness.DEGRADED, not_ready: Readiness.NOT_READY } as const;
const DEP_STATE = { ok: DependencyState.OK, degraded: DependencyState.DEGRADED, down: DependencyState.DOWN } as const;
const CRITICALITY = {
  CRITICAL: Criticality.CRITICAL,
  ESSENTIAL: Criticality.ESSENTIAL,
  BEST_EFFORT: Criticality.BEST_EFFORT,
} as const;
const MODE = {
  normal: CapabilityMode.NORMAL,
  degraded: CapabilityMode.DEGRADED,
  blocked: CapabilityMode.BLOCKED,
} as const;

/** One event bus link as GetStatus reports it (see EventBus.links()). */
export interface BusLinkInit {
  name: string;
  lagMessages: number;
  lagSeconds: number;
  lastSyncAt?: number;
  rejected: number;
  /** Of lagMessages, those still at the hub (hub -> edge links). @default 0 */
  hubBacklog?: number;
}

/** The edge's hub link as GetStatus reports it (see createLeafLog). */
export interface HubLinkInit {
  edgeId: string;
  rejectedPublishes: number;
  lastRejectedAt?: number;
  lastRejectedSubject?: string;
}

/** The GetStatus answer for a status report. */
export function toGetStatusResponse(
  report: StatusReport,
  version: string,
  busLinks: BusLinkInit[] = [],
  hubLink?: HubLinkInit,
): GetStatusResponse {
  return create(GetStatusResponseSchema, {
    readiness: READINESS[report.status],
    dependencies: report.dependencies.map((d) =>
      create(DependencyStatusSchema, {
        name: d.name,
        state: DEP_STATE[d.state],
        detail: d.detail ?? "",
        since: timestampFromMs(d.since),
      }),
    ),
    capabilities: report.capabilities.map((c) =>
      create(CapabilityStatusSchema, {
        name: c.name,
        criticality: CRITICALITY[c.criticality],
        mode: MODE[c.mode],
        fallback: c.fallback,
        dependsOn: c.dependsOn,
        reason: c.reason ?? "",
        since: timestampFromMs(c.since),
      }),
    ),
    version,
    checkedAt: timestampFromMs(report.checkedAt),
    busLinks: busLinks.map((l) =>
      create(BusLinkStatusSchema, {
        name: l.name,
        lagMessages: BigInt(l.lagMessages),
        lagSeconds: l.lagSeconds,
        lastSync: l.lastSyncAt === undefined ? undefined : timestampFromMs(l.lastSyncAt),
        rejected: BigInt(l.rejected),
        hubBacklog: BigInt(l.hubBacklog ?? 0),
      }),
    ),
    hubLink:
      hubLink === undefined
        ? undefined
        : create(HubLinkStatusSchema, {
            edgeId: hubLink.edgeId,
            rejectedPublishes: BigInt(hubLink.rejectedPublishes),
            lastRejected: hubLink.lastRejectedAt === undefined ? undefined : timestampFromMs(hubLink.lastRejectedAt),
            lastRejectedSubject: hubLink.lastRejectedSubject ?? "",
          }),
  });
}

/** AdminService: GetStatus probes every dependency now (the same evaluation /readyz runs). */
export function createAdminService(deps: AdminServiceDeps): ServiceImpl<typeof AdminService> {
  return {
    getStatus: () =>
      toGetStatusResponse(deps.matrix.evaluate(), deps.version, deps.busLinks?.() ?? [], deps.hubLink?.()),
  };
}
