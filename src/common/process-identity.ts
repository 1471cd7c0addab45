import { readFileSync } from "node:fs";

/** A process named by pid and start time, so a recycled pid is never mistaken for it. */
export interface ProcessIdentity {
  pid: number;
  /** Start time in clock ticks since boot (/proc/<pid>/stat field 22); "" where /proc is absent. */
  start: string;
}

// proc(5): the comm field (2) is in parentheses and may hold spaces, so fields count from the last ")".
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** The identity of a running process (this one by default). */
export function processIdentity(pid: number = process.pid): ProcessIdentity {
  return { pid, start: startTime(pid) ?? "" };
}

/** True while the process named by `id` runs (same pid and same start time). */
export function isRunning(id: ProcessIdentity): boolean {
  const start = startTime(id.pid);
  if (start !== undefined) return id.start === "" || start === id.start;
  try {
    process.kill(id.pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Parses what `JSON.stringify(processIdentity())` wrote; undefined for anything else. */
export function parseProcessIdentity(text: string): ProcessIdentity | undefined {
  try {
    const v = JSON.parse(text) as Partial<ProcessIdentity>;
    if (Number.isInteger(v.pid) && (v.pid ?? 0) > 0 && typeof v.start === "string")
      return { pid: v.pid!, start: v.start };
  } catch {
    // not a pid file of ours
  }
  return undefined;
}
