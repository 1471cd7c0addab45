import { createRequire } from "node:module";
import { GrpcInstrumentation } from "@opentelemetry/instrumentation-grpc";

/**
 * Enables @opentelemetry/instrumentation-grpc and loads @grpc/grpc-js through `require` so the
 * instrumentation patches it; createTelemetry() then gives it a tracer provider or disables it.
 * Call it once per process (the CLI entry), before the grpc-js server is created: a second
 * instance would wrap the same methods again and open two spans per call.
 *
 * Why require and not the import-in-the-middle ESM hook (`register("@opentelemetry/
 * instrumentation/hook.mjs")`): grpc-js is CommonJS, so ESM `import`s of it (tsx or compiled)
 * share the one module object in the require cache, and the instrumentation patches
 * Server.prototype.register and Client.prototype.make*Request in place on it. That works whether
 * or not grpc-js was imported before, without a loader hook on every module. What it does not
 * reach are the module-level functions it re-exports (makeClientConstructor,
 * loadPackageDefinition): an ESM namespace keeps the originals. The kernel uses neither.
 */
export function registerGrpcInstrumentation(): GrpcInstrumentation {
  const instrumentation = new GrpcInstrumentation({ enabled: true });
  const require = createRequire(import.meta.url);
  require("@grpc/grpc-js");
  return instrumentation;
}
