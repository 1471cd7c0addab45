import { loadRawConfig } from "./load-config.js";
import { DEFAULT_KERNEL_OPTIONS, resolveKernelOptions, type KernelOptions } from "./kernel-options.js";

/** Loads options from an optional file and the environment (SPIFFE_ENDPOINT_SOCKET included). */
export function loadKernelOptions(file: string | undefined, env: Record<string, string | undefined>): KernelOptions {
  const raw = loadRawConfig({ file, env, defaults: DEFAULT_KERNEL_OPTIONS });
  const socket = env.SPIFFE_ENDPOINT_SOCKET;
  if (socket) {
    const identity = (raw.identity ??= {}) as Record<string, unknown>;
    identity.socket ??= socket;
  }
  return resolveKernelOptions(raw);
}
