import { readdirSync, readFileSync } from "node:fs";

/** Open file descriptors of this process and its soft limit; `undefined` where the OS does not say (non-Linux). */
export interface DescriptorUsage {
  open: number | undefined;
  limit: number | undefined;
}

// /proc/self/limits: "Max open files            1024                 1048576              files"
const MAX_OPEN_FILES = /^Max open files\s+(\d+|unlimited)\s/m;

/** The soft RLIMIT_NOFILE of this process (Linux /proc), or undefined when unknown or unlimited. */
export function descriptorLimit(): number | undefined {
  try {
    const m = MAX_OPEN_FILES.exec(readFileSync("/proc/self/limits", "utf8"));
    return m && m[1] !== "unlimited" ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** How many descriptors this process holds (one readdir of /proc/self/fd), or undefined off Linux. */
export function openDescriptors(): number | undefined {
  try {
    // The directory handle readdir opens is itself listed: not one of ours.
    return readdirSync("/proc/self/fd").length - 1;
  } catch {
    return undefined;
  }
}

/** Both numbers at once: what an overload check or the connection budget needs. */
export function descriptorUsage(): DescriptorUsage {
  return { open: openDescriptors(), limit: descriptorLimit() };
}
