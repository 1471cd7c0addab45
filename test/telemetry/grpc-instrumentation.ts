// Imported first by tests that serve over grpc-js: instrumentation-grpc must patch @grpc/grpc-js
// before any other module imports it (what src/cli.ts does for the real kernel).
import { registerGrpcInstrumentation } from "../../src/telemetry/register-instrumentation.js";

/** The process-wide instrumentation of this test worker. */
export const grpcInstrumentation = registerGrpcInstrumentation();
