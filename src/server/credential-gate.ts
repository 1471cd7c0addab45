import type { DescMethod } from "@bufbuild/protobuf";

/** A call as the credential gate sees it, before its body is read. */
export interface GateRequest {
  method: DescMethod;
  /** A request header or metadata value (lower-case name), or null/undefined when absent. */
  header(name: string): string | null | undefined;
  /** The peer presented a client certificate over TLS. */
  peerCertificate: boolean;
  /** Remote "ip:port", for the audit row. */
  peer: string;
  /** The request's correlation id (asked for a refusal only: the gRPC port mints one then). */
  requestId(): string;
}

/**
 * True when the call may have its body read; a refusal has been audited. The servers call it
 * before decoding a request; identity implements it (createCredentialGate).
 */
export type CredentialGate = (req: GateRequest) => boolean;
