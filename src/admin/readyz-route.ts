import type { HttpRoute, RouteRequest } from "../server/index.js";
import type { StatusReport } from "./status-matrix.js";

/** What the /readyz route needs. */
export interface ReadyzRouteDeps {
  /** Evaluates the status matrix now. */
  readiness(): StatusReport;
  /**
   * Whether the caller may see the details: resolves true when the request authenticates as a
   * principal allowed to call AdminService.GetStatus (the kernel runs that call's chain).
   */
  mayReadDetails(req: RouteRequest): Promise<boolean>;
}

/**
 * GET /readyz. Anyone (a kubelet probe, a load balancer) learns ready or not: 200 or 503 with
 * `{ ready, status }`. Dependencies and capabilities, whose details name hosts, versions and
 * outages, go only to a caller that authenticates as someone allowed to read GetStatus (issue 13
 * item 18); the status code is the same for both.
 */
export function createReadyzRoute(deps: ReadyzRouteDeps): HttpRoute {
  const send = (res: Parameters<HttpRoute>[1], status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
    res.end(JSON.stringify(body));
  };
  return (req, res) => {
    const report = deps.readiness();
    const status = report.ready ? 200 : 503;
    deps.mayReadDetails(req).then(
      (details) => send(res, status, details ? report : { ready: report.ready, status: report.status }),
      () => send(res, status, { ready: report.ready, status: report.status }),
    );
  };
}
