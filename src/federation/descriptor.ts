import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import {
  KernelDescriptorSchema,
  SignedDescriptorSchema,
  type KernelDescriptor,
  type SignedDescriptor,
} from "../../gen/nops/federation/v1/federation_pb.js";
import { EDGE_ID_PATTERN, type Clock } from "../common/index.js";
import type { X509Bundle } from "../identity/index.js";
import { FederationRefusal, signWithSvid, verifySvidJws, type SigningIdentity } from "./kernel-jws.js";

/** JWS type of a signed kernel descriptor. */
export const DESCRIPTOR_JWS_TYPE = "nops-kernel-descriptor+jws";

/** The API versions this kernel's federation speaks. */
export const FEDERATION_API_VERSIONS: readonly string[] = ["nops.federation.v1"];

/** What a descriptor says, before signing. */
export interface DescriptorFields {
  kernelId: string;
  grpcEndpoint: string;
  httpEndpoint: string;
  bundleEndpointUrl: string;
  tenants: readonly string[];
}

/** Builds and signs this kernel's descriptor, valid from now for `ttlMs`. */
export async function signDescriptor(
  identity: SigningIdentity,
  fields: DescriptorFields,
  clock: Clock,
  ttlMs: number,
): Promise<SignedDescriptor> {
  const now = clock.now();
  const trustDomain = new URL(identity.spiffeId).host;
  const descriptor = create(KernelDescriptorSchema, {
    kernelId: fields.kernelId,
    spiffeId: identity.spiffeId,
    trustDomain,
    grpcEndpoint: fields.grpcEndpoint,
    httpEndpoint: fields.httpEndpoint,
    apiVersions: [...FEDERATION_API_VERSIONS],
    bundleEndpointUrl: fields.bundleEndpointUrl,
    tenants: [...fields.tenants],
    // A second of slack for the peer's clock (skew beyond that is the operator's to fix).
    notBefore: timestampFromMs(now - 1000),
    notAfter: timestampFromMs(now + ttlMs),
  });
  const payload = new TextEncoder().encode(toJsonString(KernelDescriptorSchema, descriptor));
  const jws = await signWithSvid(identity, DESCRIPTOR_JWS_TYPE, payload);
  return create(SignedDescriptorSchema, { jws, descriptor });
}

/**
 * Verifies a peer's signed descriptor against its pin: the JWS (not the readable copy) is what
 * counts; its signer must be `spiffeId`, the descriptor must name that same ID and its trust
 * domain, and `now` must be inside its validity window.
 */
export async function verifyDescriptor(
  signed: SignedDescriptor | undefined,
  pin: { spiffeId: string; bundle: X509Bundle },
  clock: Clock,
): Promise<{ descriptor: KernelDescriptor; leafDer: Uint8Array; chain: Uint8Array[] }> {
  if (!signed?.jws) throw new FederationRefusal("invalid-argument", "descriptor.jws is missing");
  const { payload, peer, leafDer, chain } = await verifySvidJws(
    signed.jws,
    { spiffeId: pin.spiffeId, bundle: pin.bundle, typ: DESCRIPTOR_JWS_TYPE },
    clock,
  );
  let descriptor: KernelDescriptor;
  try {
    descriptor = fromJsonString(KernelDescriptorSchema, new TextDecoder().decode(payload));
  } catch {
    throw new FederationRefusal("invalid-argument", "descriptor payload is not a KernelDescriptor");
  }
  if (descriptor.spiffeId !== peer.spiffeId || descriptor.trustDomain !== peer.trustDomain) {
    throw new FederationRefusal("permission-denied", "descriptor names another identity than its signer");
  }
  // The kernel id becomes the edge of the peer's event link (a NATS subject token).
  if (!EDGE_ID_PATTERN.test(descriptor.kernelId)) {
    throw new FederationRefusal("invalid-argument", `descriptor.kernel_id must match ${EDGE_ID_PATTERN.source}`);
  }
  const now = clock.now();
  if (!descriptor.notBefore || !descriptor.notAfter) {
    throw new FederationRefusal("invalid-argument", "descriptor has no validity window");
  }
  if (now < timestampMs(descriptor.notBefore) || now > timestampMs(descriptor.notAfter)) {
    throw new FederationRefusal("unauthenticated", "descriptor is outside its validity window (stale)");
  }
  return { descriptor, leafDer, chain };
}
