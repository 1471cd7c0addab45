import { createHash, randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import {
  HandshakeResponseSchema,
  type FederationService,
  type HandshakeFinish,
  type HandshakeHello,
  type HandshakeResponse,
  type SignedDescriptor,
} from "../../gen/nops/federation/v1/federation_pb.js";
import type { Clock } from "../common/index.js";
import type { AuditLog } from "../audit/index.js";
import type { Logger } from "../telemetry/index.js";
import { verifyPeer, type X509Bundle } from "../identity/index.js";
import { verifyDescriptor } from "./descriptor.js";
import { claimedSigner, FederationRefusal, signWithSvid, verifySvidJws, type SigningIdentity } from "./kernel-jws.js";
import { parseSpiffeBundle } from "./spiffe-bundle.js";
import type { PeerRecord, PeerRegistry } from "./peer-registry.js";

/** JWS type of a handshake proof of possession. */
export const PROOF_JWS_TYPE = "nops-federation-proof+jws";

const NONCE_BYTES = 32;
const TRANSCRIPT_LABEL = "nops-federation-handshake/v1";

/** This kernel as a handshake party: what it signs with and what it presents. */
export interface HandshakeSelf {
  identity(): SigningIdentity;
  descriptor(): Promise<SignedDescriptor>;
  /** Own trust bundle, SPIFFE bundle format. */
  bundle(): string;
}

/** Options of both handshake roles. */
export interface HandshakeOptions {
  /** How long a hello's answer waits for its finish. @default 30000 */
  handshakeTtlMs: number;
  /** Open handshakes and remembered nonces held at most; beyond it hellos are refused. @default 10000 */
  maxPending: number;
}

/** Defaults of HandshakeOptions. */
export const DEFAULT_HANDSHAKE_OPTIONS: Readonly<HandshakeOptions> = { handshakeTtlMs: 30_000, maxPending: 10_000 };

/** Transcript hash both sides sign: every field of the exchange, in order (base64url SHA-256). */
export function transcriptHash(parts: {
  initiatorDescriptor: string;
  initiatorBundle: string;
  initiatorNonce: Uint8Array;
  responderDescriptor: string;
  responderBundle: string;
  responderNonce: Uint8Array;
}): string {
  const canonical = JSON.stringify([
    TRANSCRIPT_LABEL,
    parts.initiatorDescriptor,
    parts.initiatorBundle,
    Buffer.from(parts.initiatorNonce).toString("base64url"),
    parts.responderDescriptor,
    parts.responderBundle,
    Buffer.from(parts.responderNonce).toString("base64url"),
  ]);
  return createHash("sha256").update(canonical).digest("base64url");
}

interface ProofClaims {
  th: string;
  nonce: string;
  role: "initiator" | "responder";
  aud: string;
}

async function signProof(identity: SigningIdentity, claims: ProofClaims): Promise<string> {
  return signWithSvid(identity, PROOF_JWS_TYPE, new TextEncoder().encode(JSON.stringify(claims)));
}

async function verifyProof(
  proof: string,
  pin: { spiffeId: string; bundle: X509Bundle },
  expected: ProofClaims,
  leafDer: Uint8Array,
  clock: Clock,
): Promise<void> {
  if (!proof) throw new FederationRefusal("invalid-argument", "proof is missing");
  const verified = await verifySvidJws(proof, { ...pin, typ: PROOF_JWS_TYPE }, clock);
  if (!Buffer.from(verified.leafDer).equals(Buffer.from(leafDer))) {
    throw new FederationRefusal("unauthenticated", "proof is signed by another SVID than the descriptor");
  }
  let claims: Partial<ProofClaims>;
  try {
    claims = JSON.parse(new TextDecoder().decode(verified.payload)) as Partial<ProofClaims>;
  } catch {
    throw new FederationRefusal("invalid-argument", "proof payload is not JSON");
  }
  if (claims.role !== expected.role || claims.aud !== expected.aud) {
    throw new FederationRefusal("permission-denied", "proof is for another party or role");
  }
  if (claims.nonce !== expected.nonce || claims.th !== expected.th) {
    throw new FederationRefusal("unauthenticated", "proof does not cover this handshake's nonce and transcript");
  }
}

/** The pin a peer's statement is checked against, or a refusal naming why there is none. */
function pinFor(registry: PeerRegistry, claimed: string | undefined): PeerRecord & { bundle: { x509: X509Bundle } } {
  if (!claimed) throw new FederationRefusal("unauthenticated", "signature names no SPIFFE ID");
  let td: string;
  try {
    td = new URL(claimed).host;
  } catch {
    throw new FederationRefusal("unauthenticated", "signature names no SPIFFE ID");
  }
  const peer = registry.byTrustDomain(td);
  if (!peer) throw new FederationRefusal("permission-denied", `${claimed} is not a pinned peer`);
  if (peer.state === "quarantined")
    throw new FederationRefusal("permission-denied", `peer ${peer.spiffeId} is quarantined`);
  if (!peer.bundle) {
    throw new FederationRefusal("failed-precondition", `no bundle of ${td} yet (pinned by fingerprint; not fetched)`);
  }
  return peer as PeerRecord & { bundle: { x509: X509Bundle } };
}

/**
 * Checks that a bundle a peer presented (covered by its proof) verifies the peer's own SVID;
 * a peer whose bundle cannot be verified is quarantined by the caller.
 */
function checkPresentedBundle(peer: PeerRecord, text: string, leafChain: readonly Uint8Array[], clock: Clock): void {
  const bundle = parseSpiffeBundle(peer.trustDomain, text);
  verifyPeer(leafChain, new Map([[peer.trustDomain, bundle.x509]]), clock, { allowedIds: [peer.spiffeId] });
}

interface Pending {
  peer: string;
  expiresAt: number;
  th: string;
  responderNonce: string;
  leafDer: Uint8Array;
  chain: Uint8Array[];
  bundle: string;
  /** From the initiator's verified descriptor. */
  kernelId: string;
}

/** Dependencies of both roles. */
export interface HandshakeDeps {
  registry: PeerRegistry;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
  self: HandshakeSelf;
}

/** The responder side: answers hellos, verifies finishes, establishes the peer. */
export interface HandshakeResponder {
  hello(hello: HandshakeHello): Promise<HandshakeResponse>;
  finish(finish: HandshakeFinish): Promise<HandshakeResponse>;
}

/** Creates the responder. Every refusal is audited as "federation.handshake" (denied) with its reason. */
export function createHandshakeResponder(deps: HandshakeDeps, options: HandshakeOptions): HandshakeResponder {
  const { registry, audit, clock, self } = deps;
  const log = deps.logger.child({ component: "federation-handshake" });
  const pending = new Map<string, Pending>();
  // Initiator nonces seen, kept until the descriptor they came with expires: a replayed hello is refused.
  const seen = new Map<string, number>();
  const sweep = (now: number) => {
    for (const [k, exp] of pending) if (exp.expiresAt <= now) pending.delete(k);
    for (const [k, exp] of seen) if (exp <= now) seen.delete(k);
  };
  const refuse = (step: string, actor: string | undefined, err: unknown): never => {
    const refusal =
      err instanceof FederationRefusal
        ? err
        : new FederationRefusal("unauthenticated", "handshake failed", { cause: err });
    audit.append({
      actor: actor ?? "anonymous",
      action: "federation.handshake",
      tenant: "",
      resource: `handshake/${step}`,
      outcome: "denied",
      details: { reason: refusal.reason },
    });
    log.warn({ step, peer: actor, reason: refusal.reason }, "federation handshake refused");
    throw refusal;
  };

  return {
    async hello(hello) {
      const claimed = claimedSigner(hello.descriptor?.jws ?? "");
      try {
        const now = clock.now();
        sweep(now);
        if (hello.nonce.length !== NONCE_BYTES) {
          throw new FederationRefusal("invalid-argument", `nonce must be ${NONCE_BYTES} bytes`);
        }
        const peer = pinFor(registry, claimed);
        const verified = await verifyDescriptor(
          hello.descriptor,
          { spiffeId: peer.spiffeId, bundle: peer.bundle.x509 },
          clock,
        );
        const nonceKey = Buffer.from(hello.nonce).toString("base64url");
        if (seen.has(nonceKey)) throw new FederationRefusal("unauthenticated", "nonce was already used (replay)");
        if (pending.size >= options.maxPending || seen.size >= options.maxPending) {
          throw new FederationRefusal("failed-precondition", "too many open handshakes; retry later");
        }
        seen.set(
          nonceKey,
          Math.max(now + options.handshakeTtlMs, Number(verified.descriptor.notAfter!.seconds) * 1000),
        );
        const mine = await self.descriptor();
        const myBundle = self.bundle();
        const nonce = new Uint8Array(randomBytes(NONCE_BYTES));
        const th = transcriptHash({
          initiatorDescriptor: hello.descriptor!.jws,
          initiatorBundle: hello.bundle,
          initiatorNonce: hello.nonce,
          responderDescriptor: mine.jws,
          responderBundle: myBundle,
          responderNonce: nonce,
        });
        const proof = await signProof(self.identity(), {
          th,
          nonce: nonceKey,
          role: "responder",
          aud: peer.spiffeId,
        });
        const handshakeId = randomBytes(18).toString("base64url");
        pending.set(handshakeId, {
          peer: peer.spiffeId,
          expiresAt: now + options.handshakeTtlMs,
          th,
          responderNonce: Buffer.from(nonce).toString("base64url"),
          leafDer: verified.leafDer,
          chain: verified.chain,
          bundle: hello.bundle,
          kernelId: verified.descriptor.kernelId,
        });
        return create(HandshakeResponseSchema, { handshakeId, descriptor: mine, bundle: myBundle, nonce, proof });
      } catch (err) {
        return refuse("hello", claimed, err);
      }
    },
    async finish(finish) {
      const now = clock.now();
      const open = pending.get(finish.handshakeId);
      // One use only: a replayed finish, or one after the window, finds nothing.
      pending.delete(finish.handshakeId);
      if (!open)
        return refuse(
          "finish",
          undefined,
          new FederationRefusal("unauthenticated", "unknown, used or expired handshake_id"),
        );
      try {
        if (open.expiresAt <= now) throw new FederationRefusal("unauthenticated", "handshake expired (stale nonce)");
        const peer = pinFor(registry, open.peer);
        await verifyProof(
          finish.proof,
          { spiffeId: peer.spiffeId, bundle: peer.bundle.x509 },
          { th: open.th, nonce: open.responderNonce, role: "initiator", aud: self.identity().spiffeId },
          open.leafDer,
          clock,
        );
        // The proof covers the presented bundle: from here on it is the peer's own statement.
        try {
          checkPresentedBundle(peer, open.bundle, open.chain, clock);
          registry.updateBundle(peer.spiffeId, open.bundle, peer.spiffeId);
        } catch (err) {
          registry.quarantine(peer.spiffeId, `presented bundle cannot be verified: ${message(err)}`, "system");
          throw new FederationRefusal("permission-denied", "presented bundle cannot be verified; peer quarantined");
        }
        registry.establish(peer.spiffeId, peer.spiffeId, open.kernelId);
        log.info({ peer: peer.spiffeId }, "federation handshake completed (responder)");
        return create(HandshakeResponseSchema, { established: true });
      } catch (err) {
        return refuse("finish", open.peer, err);
      }
    },
  };
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The initiator side: runs hello and finish against `client` (a FederationService client bound
 * to the peer's endpoint, TLS pinned to its SPIFFE ID) and records the peer as established.
 * Refusals of the peer's answers are audited like the responder's.
 */
export async function initiateHandshake(
  deps: HandshakeDeps,
  peerId: string,
  client: Client<typeof FederationService>,
  signal?: AbortSignal,
): Promise<PeerRecord> {
  const { registry, audit, clock, self } = deps;
  const peer = registry.get(peerId);
  if (!peer) throw new FederationRefusal("failed-precondition", `no peer ${peerId}`);
  const mine = await self.descriptor();
  const myBundle = self.bundle();
  const nonce = new Uint8Array(randomBytes(NONCE_BYTES));
  const answer = await client.handshake(
    { step: { case: "hello", value: { descriptor: mine, bundle: myBundle, nonce } } },
    { signal },
  );
  try {
    const pin = pinFor(registry, peerId);
    if (pin.spiffeId !== peerId) throw new FederationRefusal("permission-denied", "peer answered as another identity");
    const verified = await verifyDescriptor(
      answer.descriptor,
      { spiffeId: pin.spiffeId, bundle: pin.bundle.x509 },
      clock,
    );
    if (answer.nonce.length !== NONCE_BYTES)
      throw new FederationRefusal("invalid-argument", `nonce must be ${NONCE_BYTES} bytes`);
    const th = transcriptHash({
      initiatorDescriptor: mine.jws,
      initiatorBundle: myBundle,
      initiatorNonce: nonce,
      responderDescriptor: answer.descriptor!.jws,
      responderBundle: answer.bundle,
      responderNonce: answer.nonce,
    });
    const chain = verified.chain;
    await verifyProof(
      answer.proof,
      { spiffeId: pin.spiffeId, bundle: pin.bundle.x509 },
      { th, nonce: Buffer.from(nonce).toString("base64url"), role: "responder", aud: self.identity().spiffeId },
      verified.leafDer,
      clock,
    );
    try {
      checkPresentedBundle(pin, answer.bundle, chain, clock);
    } catch (err) {
      registry.quarantine(pin.spiffeId, `presented bundle cannot be verified: ${message(err)}`, "system");
      throw new FederationRefusal("permission-denied", "presented bundle cannot be verified; peer quarantined");
    }
    const proof = await signProof(self.identity(), {
      th,
      nonce: Buffer.from(answer.nonce).toString("base64url"),
      role: "initiator",
      aud: pin.spiffeId,
    });
    const done = await client.handshake(
      { step: { case: "finish", value: { handshakeId: answer.handshakeId, proof } } },
      { signal },
    );
    if (!done.established) throw new FederationRefusal("failed-precondition", "peer did not confirm the handshake");
    registry.updateBundle(pin.spiffeId, answer.bundle, pin.spiffeId);
    return registry.establish(pin.spiffeId, self.identity().spiffeId, verified.descriptor.kernelId);
  } catch (err) {
    const refusal = err instanceof FederationRefusal ? err : undefined;
    if (refusal) {
      audit.append({
        actor: peerId,
        action: "federation.handshake",
        tenant: "",
        resource: "handshake/initiate",
        outcome: "denied",
        details: { reason: refusal.reason },
      });
    }
    throw err;
  }
}
