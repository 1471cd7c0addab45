import type { AuditLog } from "../audit/index.js";
import { ConfigError } from "../common/index.js";
import { verifyRelease, type ReleaseVerification } from "./release.js";
import type { ReleaseOptions } from "./release-options.js";

/**
 * Verifies the running kernel's release before it serves (release.enforce) and records the
 * evidence, pass or fail, in the audit log. A failure throws: the kernel refuses to start.
 */
export function checkReleaseAtBoot(options: ReleaseOptions, audit: AuditLog): ReleaseVerification {
  const result = verifyRelease(options.root, options.dir, options.trustedKeys);
  audit.append({
    actor: "system",
    action: "release.verify",
    tenant: "system",
    resource: `release/${result.kernelVersion ?? "unknown"}`,
    outcome: result.ok ? "ok" : "denied",
    details: {
      root: options.root,
      dir: options.dir,
      files: result.files,
      ...(result.signedBy ? { signedBy: result.signedBy } : {}),
      ...(result.sourceCommit ? { sourceCommit: result.sourceCommit } : {}),
      // The first problems name what failed; the count says how many there were.
      problems: result.problems.slice(0, 20),
      problemCount: result.problems.length,
    },
  });
  if (!result.ok)
    throw new ConfigError(
      `release verification failed (${result.problems.length} problem(s)): ${result.problems.slice(0, 5).join("; ")}`,
    );
  return result;
}
