import { request, type RequestOptions } from "node:https";
import type { TLSSocket } from "node:tls";
import { KernelError, type Clock } from "../common/index.js";
import { derChainFromPeerCertificate } from "../server/index.js";
import { verifyPeer, type X509Bundle } from "../identity/index.js";
import { bundleHasAuthority, parseSpiffeBundle, SpiffeBundleError } from "./spiffe-bundle.js";
import type { PeerRecord } from "./peer-registry.js";

const MAX_BODY_BYTES = 256 * 1024;

/** A bundle fetch that failed; `verification` says the endpoint answered something untrustworthy. */
export class BundleFetchError extends KernelError {
  override name = "BundleFetchError";
  constructor(
    message: string,
    readonly verification: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

function get(url: URL, options: RequestOptions, timeoutMs: number): Promise<{ body: string; socket: TLSSocket }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ...options, method: "GET", headers: { accept: "application/json" } }, (res) => {
      const socket = res.socket as TLSSocket;
      if (res.statusCode !== 200) {
        res.resume();
        reject(new BundleFetchError(`bundle endpoint answered HTTP ${res.statusCode ?? 0}`, false));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY_BYTES) {
          req.destroy(new BundleFetchError(`bundle is larger than ${MAX_BODY_BYTES} bytes`, true));
          return;
        }
        chunks.push(c);
      });
      res.on("end", () => resolve({ body: Buffer.concat(chunks).toString("utf8"), socket }));
      res.on("error", reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new BundleFetchError(`bundle fetch took over ${timeoutMs} ms`, false)));
    req.on("error", (err) =>
      reject(
        err instanceof BundleFetchError
          ? err
          : new BundleFetchError(`bundle endpoint unreachable: ${err.message}`, false),
      ),
    );
    req.end();
  });
}

/**
 * Fetches a peer's bundle from its bundle endpoint (SPIFFE Federation §5). https_spiffe: the
 * endpoint must present the pinned peer's SVID, verified against the bundle trusted now — or,
 * when the peer was pinned by fingerprint only, against the fetched bundle, which must then hold
 * the pinned authority. https_web: ordinary Web PKI server authentication. Returns the document.
 */
export async function fetchPeerBundle(peer: PeerRecord, clock: Clock, timeoutMs: number): Promise<string> {
  const url = new URL(peer.bundleEndpointUrl);
  if (peer.bundleEndpointProfile === "https_web") {
    const { body } = await get(url, { rejectUnauthorized: true }, timeoutMs);
    check(peer, body);
    return body;
  }
  // The TLS stack cannot pick an anchor by SPIFFE trust domain; the chain is verified below instead.
  const { body, socket } = await get(url, { rejectUnauthorized: false, agent: false }, timeoutMs);
  const chain = derChainFromPeerCertificate(socket.getPeerCertificate(true));
  const fetched = check(peer, body);
  const anchor: X509Bundle = peer.bundle?.x509 ?? fetched;
  try {
    verifyPeer(chain, new Map([[peer.trustDomain, anchor]]), clock, { allowedIds: [peer.spiffeId] });
  } catch (err) {
    throw new BundleFetchError(
      `bundle endpoint did not present the pinned peer's SVID: ${err instanceof Error ? err.message : String(err)}`,
      true,
      { cause: err },
    );
  }
  return body;
}

function check(peer: PeerRecord, body: string): X509Bundle {
  let bundle;
  try {
    bundle = parseSpiffeBundle(peer.trustDomain, body);
  } catch (err) {
    throw new BundleFetchError(err instanceof SpiffeBundleError ? err.message : "bundle cannot be parsed", true, {
      cause: err,
    });
  }
  if (peer.pinnedFingerprint && !bundleHasAuthority(bundle.x509, peer.pinnedFingerprint)) {
    throw new BundleFetchError("bundle holds no authority with the pinned SHA-256 fingerprint", true);
  }
  return bundle.x509;
}
