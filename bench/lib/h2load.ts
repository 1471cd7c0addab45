// h2load (nghttp2's C load generator) as the bench's independent load generator: a Node load
// generator saturates before the kernel does and flatters every ratio. Each run sends one
// pre-encoded request body, reads h2load's per-request log for the percentiles, and counts a
// gRPC call as answered only when its response DATA arrived (a gRPC error is HTTP 200 with a
// trailers-only answer, which h2load would count as a success).
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { percentile, type LoadResult } from "./load.js";

/** Where h2load is, installing Debian's nghttp2-client when it is missing and we are root. */
export function ensureH2load(): string {
  const find = (): string | undefined => {
    try {
      return execFileSync("sh", ["-c", "command -v h2load"], { encoding: "utf8" }).trim() || undefined;
    } catch {
      return undefined;
    }
  };
  const found = find();
  if (found) return found;
  if (process.getuid?.() !== 0)
    throw new Error("h2load is missing: run `apt-get install nghttp2-client` as root, then the bench again");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const install = ["install", "-y", "-qq", "--no-install-recommends", "nghttp2-client"];
  try {
    execFileSync("apt-get", install, { env, stdio: "ignore" });
  } catch {
    execFileSync("apt-get", ["update", "-qq"], { env, stdio: "ignore" });
    execFileSync("apt-get", install, { env, stdio: "ignore" });
  }
  const installed = find();
  if (!installed) throw new Error("installing nghttp2-client did not provide h2load");
  return installed;
}

/** A gRPC length-prefixed message (uncompressed). */
export function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

/** Request headers for a unary gRPC call. */
export const GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"];
/** Request headers for a unary Connect call with the binary codec. */
export const CONNECT_HEADERS = ["content-type: application/proto", "connect-protocol-version: 1"];

/** One h2load run. Closed loop (`clients` x `streams` in flight) unless `rps` is given. */
export interface H2Options {
  name: string;
  /** http://host:port/package.Service/Method */
  url: string;
  body: Uint8Array;
  headers: string[];
  clients: number;
  streams: number;
  seconds: number;
  warmupSeconds: number;
  /** Requests per second per client (open loop). */
  rps?: number;
  /**
   * Bytes of response DATA one successful call returns; when given, calls whose DATA did not
   * arrive are counted as errors.
   */
  responseBytes?: number;
  /** Called when the measured run starts (after the warm-up), e.g. to sample CPU time. */
  onMeasuring?: () => void;
}

/** Runs h2load and summarises its per-request log. */
export async function runH2load(options: H2Options): Promise<LoadResult> {
  const h2load = ensureH2load();
  const dir = mkdtempSync(join(tmpdir(), "nops-h2load-"));
  try {
    const bodyFile = join(dir, "body");
    const logFile = join(dir, "requests.log");
    writeFileSync(bodyFile, options.body);
    const run = (seconds: number, log?: string): Promise<string> => {
      const args = [
        ...["-c", String(options.clients), "-m", String(options.streams), "-t", "1", "-D", String(seconds)],
        ...["-d", bodyFile, ...options.headers.flatMap((h) => ["-H", h])],
        ...(options.rps ? ["--rps", String(options.rps)] : []),
        ...(log ? ["--log-file", log] : []),
        options.url,
      ];
      return new Promise<string>((resolve, reject) => {
        const child = spawn(h2load, args, { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        child.stdout.on("data", (d: Buffer) => (out += d.toString()));
        child.stderr.on("data", (d: Buffer) => (out += d.toString()));
        child.once("error", reject);
        child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`h2load exited ${code}: ${out}`))));
      });
    };
    // A separate warm-up run: h2load's own --warm-up-time leaves the warm-up's DATA in the
    // traffic total, which the answered-call check below reads.
    if (options.warmupSeconds > 0) await run(options.warmupSeconds);
    options.onMeasuring?.();
    const summary = await run(options.seconds, logFile);
    // One row per request: start (µs since the epoch), HTTP status, duration (µs). Status 0
    // marks a request still in flight when the run ended: neither an answer nor an error.
    const rows = readFileSync(logFile, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((line) => line.split("\t").map(Number) as [number, number, number])
      .filter(([, status]) => status !== 0);
    const ok = rows.filter(([, status]) => status >= 200 && status < 300);
    const latencies = Float64Array.from(ok.map(([, , us]) => us / 1000)).sort();
    // gRPC errors are 200s without the answer's DATA.
    let unanswered = 0;
    if (options.responseBytes) {
      const data = Number(/traffic: .*?(\d+)\) data/.exec(summary)?.[1] ?? NaN);
      if (!Number.isFinite(data)) throw new Error(`h2load printed no traffic line:\n${summary}`);
      unanswered = Math.max(0, ok.length - Math.floor(data / options.responseBytes));
    }
    return {
      name: options.name,
      requests: ok.length - unanswered,
      errors: rows.length - ok.length + unanswered,
      rps: (ok.length - unanswered) / options.seconds,
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** CPU time (user + system) a process has used so far, ms (Linux /proc; 10 ms ticks). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8")
    .replace(/^.*\) /, "")
    .split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

/**
 * Runs a load (`run` is handed the hook to call when its measured run starts, after the warm-up) and reads
 * the CPU time each process of `pids` spent per call, answered or failed, over that measured run, µs: a
 * figure that does not depend on how the processes shared the cores.
 */
export async function withCpuPerCall(
  pids: readonly number[],
  run: (onMeasuring: () => void) => Promise<LoadResult>,
): Promise<{ result: LoadResult; cpuUs: number[] }> {
  let before: number[] = [];
  const result = await run(() => (before = pids.map((pid) => cpuMs(pid))));
  const calls = Math.max(1, result.requests + result.errors);
  return { result, cpuUs: pids.map((pid, i) => ((cpuMs(pid) - before[i]!) * 1000) / calls) };
}

/** Resident set size of a process, MiB (Linux /proc). */
export function rssMiB(pid: number): number {
  const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);
  return kb / 1024;
}

/**
 * How the kernel runs when started as `nops-kernel`: the node flags and environment of the shebang of
 * `dist/src/cli.js` (`#!/usr/bin/env -S NAME=value ... node --flag ...`), so a bench that starts it with
 * `process.execPath` measures the memory settings that ship. `NOPS_BENCH_NODE_FLAGS` (space-separated) is
 * appended, so a run can try other V8 settings against the shipped ones (a later flag wins). The image
 * preloads jemalloc (image/Dockerfile), and so does the bench when this machine has libjemalloc.so.2;
 * `NOPS_BENCH_MALLOC=glibc` measures glibc's malloc instead.
 */
export function kernelLaunch(root: string): { nodeArgs: string[]; env: Record<string, string> } {
  const first = readFileSync(join(root, "dist/src/cli.js"), "utf8").split("\n", 1)[0] ?? "";
  const words = first
    .replace(/^#!\/usr\/bin\/env(\s+-S)?\s+/, "")
    .split(/\s+/)
    .filter(Boolean);
  const node = words.indexOf("node");
  if (!first.startsWith("#!") || node < 0)
    throw new Error(`dist/src/cli.js: no node shebang in ${JSON.stringify(first)}`);
  const env = Object.fromEntries(words.slice(0, node).map((w) => w.split("=", 2) as [string, string]));
  const extra = (process.env.NOPS_BENCH_NODE_FLAGS ?? "").split(/\s+/).filter(Boolean);
  const jemalloc = process.env.NOPS_BENCH_MALLOC === "glibc" ? undefined : hostJemalloc();
  if (jemalloc) env.LD_PRELOAD = jemalloc;
  return { nodeArgs: [...words.slice(node + 1), ...extra], env };
}

/** Where this machine's libjemalloc.so.2 is (the loader's cache), if it has one. */
function hostJemalloc(): string | undefined {
  try {
    const cache = execFileSync("/usr/sbin/ldconfig", ["-p"], { encoding: "utf8" });
    return /^\tlibjemalloc\.so\.2 .*=> (\S+)$/m.exec(cache)?.[1];
  } catch {
    return undefined;
  }
}
