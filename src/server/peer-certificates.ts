import type { DetailedPeerCertificate, PeerCertificate } from "node:tls";

/** Most certificates read from, and accepted in, a peer's chain: real SPIFFE chains are leaf + a few intermediates. */
export const MAX_PEER_CHAIN_LENGTH = 8;

/** The DER chain (leaf first) of a TLS peer, from `socket.getPeerCertificate(true)`. */
export function derChainFromPeerCertificate(cert: PeerCertificate | DetailedPeerCertificate): Uint8Array[] {
  const out: Uint8Array[] = [];
  let c: PeerCertificate | DetailedPeerCertificate | undefined = cert;
  while (c?.raw && out.length < MAX_PEER_CHAIN_LENGTH) {
    out.push(new Uint8Array(c.raw));
    const next: DetailedPeerCertificate | undefined = "issuerCertificate" in c ? c.issuerCertificate : undefined;
    // A self-signed root points at itself.
    if (!next || next === c || next.raw.equals(c.raw)) break;
    c = next;
  }
  return out;
}
