import type { ChildProcess } from "node:child_process";

/** Resolves with the first capture group (or the whole match) once the child prints `match`. */
export function firstLine(child: ChildProcess, match: RegExp): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const m = out.match(match);
      if (m) resolve(m[1] ?? m[0]);
    });
    child.once("exit", (code) => reject(new Error(`exited with ${code}: ${out}`)));
  });
}
