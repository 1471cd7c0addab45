import { join } from "node:path";
import type { AgentLauncher } from "./agent-process.js";
import { PYTHON, ROOT, SDK_PYTHONPATH } from "./python-helpers.js";

/**
 * The Python SDK on Debian's python3 (python3-grpcio, python3-protobuf) with nops_agent from
 * sdk/python/src, running test/sdk/agents/python/conformance_agent.py.
 */
export const pythonLauncher: AgentLauncher = {
  language: "python",
  prepare() {
    return Promise.resolve({
      command: PYTHON,
      args: [join(ROOT, "test/sdk/agents/python/conformance_agent.py")],
      env: { PYTHONPATH: SDK_PYTHONPATH, PYTHONUNBUFFERED: "1", GRPC_VERBOSITY: "NONE" },
      cwd: ROOT,
    });
  },
};
