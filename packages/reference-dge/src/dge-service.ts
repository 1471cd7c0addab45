import { create, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { type Clock, checkTenant, invalidArgument, resourceExhausted } from "../../../src/common/index.js";
import type { Logger } from "pino";
import {
  ClassificationSchema,
  ClassifyResponseSchema,
  EgressClass,
  GetPolicyResponseSchema,
  PiiFindingSchema,
  ValidateEgressResponseSchema,
  Verdict,
  type Classification,
  type DataGovernanceService,
  type Tier,
} from "../../../gen/nops/dge/v1/dge_pb.js";
import { KIND_CLASS, piiTypeOf, tierNameOf, type TierName } from "./dge-codes.js";
import { evaluatePolicy, policyFor, type DgePoliciesOptions } from "./dge-policies.js";
import { DGE_SIGNATURE_HEADER, signDgeResponse } from "./dge-signature.js";
import { CLASSIFIER_VERSION, type Detection } from "./pii-kinds.js";
import { createHash } from "node:crypto";
import { LRUCache } from "lru-cache";

/**
 * The proto Classification of `text` given its detections (a worker thread's answer): empty text D0, no findings
 * D1, else the class of the highest kind found.
 */
export function classificationOf(text: string, found: readonly Detection[]): Classification {
  let egressClass = text.length === 0 ? EgressClass.D0 : EgressClass.D1;
  for (const d of found) if (KIND_CLASS[d.kind] > egressClass) egressClass = KIND_CLASS[d.kind];
  return create(ClassificationSchema, {
    egressClass,
    classifierVersion: CLASSIFIER_VERSION,
    findings: found.map((d) =>
      create(PiiFindingSchema, {
        type: piiTypeOf(d.kind),
        span: { start: d.start, end: d.end },
        confidence: d.confidence,
        rule: d.rule,
      }),
    ),
  });
}

/** Same class and the same kinds of findings (spans and confidences may differ between classifier runs). */
function agrees(a: Classification, b: Classification): boolean {
  const kinds = (c: Classification) =>
    c.findings
      .map((f) => f.type)
      .sort((x, y) => x - y)
      .join(",");
  return a.egressClass === b.egressClass && kinds(a) === kinds(b);
}

/** What the reference DGE service needs. */
export interface DgeServiceDeps {
  clock: Clock;
  logger: Logger;
  /** Key that signs every response. */
  signingKey: { id: string; secret: string };
  /** Policies; read on every call so a caller may swap them (see DgeServer.setPolicies). */
  policies: () => DgePoliciesOptions;
  /** Largest `data` accepted, UTF-16 code units. */
  maxDataChars: number;
  /** Runs the classifier off the event loop within the request's budget (see classify-pool.ts). */
  detect: (text: string, signal: AbortSignal) => Promise<Detection[]>;
}

function requireTier(tier: Tier): TierName {
  const t = tierNameOf(tier);
  if (t === undefined) throw invalidArgument("tier", "must be TIER_1, TIER_2, TIER_3 or TIER_AIR_GAPPED");
  return t;
}

/** The reference DataGovernanceService; every response is signed in the `x-dge-signature` header. */
export function createDgeService(deps: DgeServiceDeps): ServiceImpl<typeof DataGovernanceService> {
  const log = deps.logger;
  function signed<D extends DescMessage>(ctx: HandlerContext, schema: D, message: MessageShape<D>): MessageShape<D> {
    const method = `/${ctx.service.typeName}/${ctx.method.name}`;
    ctx.responseHeader.set(
      DGE_SIGNATURE_HEADER,
      signDgeResponse(deps.signingKey, method, toBinary(schema, message), deps.clock.now()),
    );
    return message;
  }
  function checkData(data: string): void {
    if (data.length > deps.maxDataChars) {
      throw resourceExhausted(
        `data is ${data.length} characters, over the limit of ${deps.maxDataChars} (dge.server.maxRequestBytes)`,
      );
    }
  }
  // What Classify answered recently, by the data's hash: ValidateEgress re-derives a supplied
  // classification from it instead of running the classifier a second time on the same text.
  const recent = new LRUCache<string, Classification>({ max: 4096 });
  const digest = (data: string) => createHash("sha256").update(data).digest("base64");
  async function classify(data: string, ctx: HandlerContext): Promise<Classification> {
    const key = digest(data);
    const known = recent.get(key);
    if (known) return known;
    const classification = classificationOf(data, await deps.detect(data, ctx.signal));
    recent.set(key, classification);
    return classification;
  }
  return {
    async classify(req, ctx) {
      checkData(req.data);
      const classification = await classify(req.data, ctx);
      log.debug(
        { tenant: req.context?.tenant, dataType: req.context?.dataType, findings: classification.findings.length },
        "classified",
      );
      return signed(ctx, ClassifyResponseSchema, create(ClassifyResponseSchema, { classification }));
    },
    getPolicy(req, ctx) {
      checkTenant(req.tenant);
      const policy = policyFor(deps.policies(), req.tenant, requireTier(req.tier));
      return signed(ctx, GetPolicyResponseSchema, create(GetPolicyResponseSchema, { policy }));
    },
    async validateEgress(req, ctx) {
      checkTenant(req.tenant);
      checkData(req.data);
      const tier = requireTier(req.tier);
      const policy = policyFor(deps.policies(), req.tenant, tier);
      // A caller's classification is never trusted: it is derived again from the data, and one
      // that disagrees (class or kinds of findings) is refused rather than decided on.
      const classification = await classify(req.data, ctx);
      const supplied = req.classification;
      if (supplied && supplied.egressClass !== EgressClass.UNSPECIFIED && !agrees(supplied, classification))
        throw invalidArgument(
          "classification",
          `disagrees with the data: supplied ${EgressClass[supplied.egressClass]} with ` +
            `${supplied.findings.length} finding(s), derived ${EgressClass[classification.egressClass]} with ` +
            `${classification.findings.length}`,
        );
      const decision = evaluatePolicy(policy, tier, classification, req.destination);
      return signed(
        ctx,
        ValidateEgressResponseSchema,
        create(ValidateEgressResponseSchema, {
          verdict: decision.allow ? Verdict.ALLOW : Verdict.DENY,
          reasonCode: decision.reason,
          policyVersion: policy.version,
          ttlSeconds: policy.ttlSeconds,
        }),
      );
    },
  };
}
