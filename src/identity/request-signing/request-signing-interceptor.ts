import { toBinary } from "@bufbuild/protobuf";
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { AuditLog } from "../../audit/index.js";
import { type Clock, unauthenticated } from "../../common/index.js";
import {
  kCorrelationId,
  methodPath,
  type CallHandler,
  type CallRequest,
  type CallResult,
  type KernelInterceptor,
} from "../../server/index.js";
import type { Logger } from "../../telemetry/index.js";
import { SIGNATURE_HEADERS } from "./canonical-request.js";
import type { NonceStore } from "./nonce-store.js";
import type { RequestSigningOptions } from "./request-signing-options.js";
import { createRequestVerifier } from "./request-verifier.js";

/** The verified signer of the request, set when a signature was checked. */
export interface RequestSigner {
  keyId: string;
  /** The tenant the key is bound to, if any. */
  tenant?: string;
}

/** Per-request value: who signed the request (undefined when it was not signed). */
export const kRequestSigner = createContextKey<RequestSigner | undefined>(undefined, { description: "request signer" });

/** Dependencies of the signature interceptor. */
export interface RequestSigningInterceptorDeps {
  nonces: NonceStore;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
}

function tenantOf(input: unknown): string | undefined {
  const t = (input as { tenant?: unknown } | null)?.tenant;
  return typeof t === "string" && t.length > 0 ? t : undefined;
}

/**
 * Creates the interceptor that verifies requests carrying x-nops-signature (docs/signed-requests.md).
 * The body is the protobuf binary encoding of the request message; streaming requests from the
 * client cannot be signed. Failures answer UNAUTHENTICATED with the reason, which is audited.
 */
export function createRequestSigningInterceptor(
  deps: RequestSigningInterceptorDeps,
  options: RequestSigningOptions,
): KernelInterceptor {
  const verifier = createRequestVerifier({ nonces: deps.nonces, clock: deps.clock }, options);
  const reject = (ctx: HandlerContext, path: string, reason: string, keyId: string | undefined): never => {
    deps.audit.append({
      actor: keyId ? `hmac:${keyId}` : "anonymous",
      action: "auth.signature.reject",
      tenant: "",
      resource: `rpc${path}`,
      outcome: "denied",
      details: { reason, keyId: keyId ?? null },
      correlationId: ctx.values.get(kCorrelationId),
    });
    deps.logger.info({ reason, keyId, path }, "signed request rejected");
    throw unauthenticated(`request signature rejected: ${reason}`);
  };
  async function verified(next: CallHandler, call: CallRequest): Promise<CallResult> {
    const { ctx } = call;
    const path = methodPath(call.method);
    if (ctx.requestHeader.get(SIGNATURE_HEADERS.signature) === null) reject(ctx, path, "missing_signature", undefined);
    if (call.method.methodKind === "client_streaming" || call.method.methodKind === "bidi_streaming") {
      return reject(
        ctx,
        path,
        "streaming_body_unsupported",
        ctx.requestHeader.get(SIGNATURE_HEADERS.keyId) ?? undefined,
      );
    }
    const input = call.method.input;
    const result = await verifier.verify({
      method: ctx.requestMethod,
      path,
      headers: ctx.requestHeader,
      body: toBinary(input, call.input as never),
      tenant: tenantOf(call.input),
    });
    if (!result.ok) return reject(ctx, path, result.reason, result.keyId);
    ctx.values.set(kRequestSigner, {
      keyId: result.key.id,
      ...(result.key.tenant ? { tenant: result.key.tenant } : {}),
    });
    return next(call);
  }
  // An unsigned call, where signatures are optional, passes without a promise of its own.
  return (next) => (call) =>
    options.required || call.ctx.requestHeader.get(SIGNATURE_HEADERS.signature) !== null
      ? verified(next, call)
      : next(call);
}
