/** The admin capability's public surface: the status matrix, its dependency probes and the AdminService handler. */
export { createAdminService } from "./admin-service.js";
export { createPollingProbe, redisProbe } from "./dependency-probes.js";
export { resolveStatusMatrixOptions, type StatusMatrixOptions } from "./status-matrix-options.js";
export { createStatusMatrix, type DependencyProbe } from "./status-matrix.js";
export { createReadyzRoute, type ReadyzRouteDeps } from "./readyz-route.js";
