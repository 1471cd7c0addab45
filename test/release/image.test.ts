// The container image: its signature binds the config digest, and the image's own entrypoint,
// started the way a runtime would (its filesystem read-only, /tmp and the data volume writable,
// its user, its environment), serves a healthy /healthz with release.enforce on.
//
// Which image: NOPS_IMAGE_OUT names a directory scripts/build-image.sh wrote (.ci/run builds the
// image once and points the test at it); otherwise the test builds it with buildah when buildah is
// installed, and else assembles the same root filesystem with scripts/image-rootfs.sh.
import { execFile, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import test, { type ExecutionContext } from "ava";
import { encodeVerifierKey, generateSigner, parseVerifierKey } from "../../src/audit/index.js";
import { sha256Hex, signImage, verifyImage, type DsseEnvelope } from "../../src/release/index.js";
import { freePort, spawnChild, waitFor } from "../helpers/processes.js";

const root = new URL("../..", import.meta.url).pathname;
const run = promisify(execFile);
const hasBuildah = (() => {
  try {
    execFileSync("buildah", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

function tempDir(t: ExecutionContext, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The OCI image config fields a runtime uses. */
interface ImageConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
}

/** An image to start: its root filesystem and how its config says to run it. */
interface Image {
  rootfs: string;
  config: ImageConfig;
  /** Set when a built image was used: its config digest and signature. */
  signed?: { digest: string; signature: DsseEnvelope; verifierKey: string };
}

/** chroot(8), by absolute path: the kernel's environment (env -i) has no PATH of the host. */
const CHROOT = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"].find((p) => existsSync(p)) ?? "chroot";

const blob = (dir: string, digest: string) => join(dir, "blobs", digest.replace(":", "/"));

/** Unpacks an OCI archive the way a runtime does: the manifest's layers, in order, into one tree. */
function unpackOciArchive(archive: string, into: string): { rootfs: string; config: ImageConfig; digest: string } {
  const oci = join(into, "oci");
  const rootfs = join(into, "rootfs");
  mkdirSync(oci);
  mkdirSync(rootfs);
  execFileSync("tar", ["-xf", archive, "-C", oci]);
  const index = JSON.parse(readFileSync(join(oci, "index.json"), "utf8")) as { manifests: { digest: string }[] };
  const manifest = JSON.parse(readFileSync(blob(oci, index.manifests[0]!.digest), "utf8")) as {
    config: { digest: string };
    layers: { digest: string; mediaType: string }[];
  };
  for (const layer of manifest.layers)
    execFileSync("tar", [layer.mediaType.endsWith("+gzip") ? "-xzf" : "-xf", blob(oci, layer.digest), "-C", rootfs]);
  const config = JSON.parse(readFileSync(blob(oci, manifest.config.digest), "utf8")) as { config: ImageConfig };
  rmSync(oci, { recursive: true, force: true });
  return { rootfs, config: config.config, digest: manifest.config.digest };
}

async function theImage(t: ExecutionContext): Promise<Image> {
  const work = tempDir(t, "nops-image-");
  let out = process.env.NOPS_IMAGE_OUT;
  if (!out && hasBuildah) {
    out = join(work, "out");
    await run("bash", [join(root, "scripts/build-image.sh"), "--out", out, "--tag", "localhost/nops-kernel:test"], {
      cwd: root,
      timeout: 1_500_000,
      maxBuffer: 16 * 1024 * 1024,
    });
  }
  if (out) {
    const { rootfs, config, digest } = unpackOciArchive(join(out, "nops-kernel.oci.tar"), work);
    const signature = JSON.parse(readFileSync(join(out, "image.dsse.json"), "utf8")) as DsseEnvelope;
    const verifierKey = /"(nops-kernel-release\+[^"]+)"/.exec(
      readFileSync(join(rootfs, "etc/nops/kernel.yaml"), "utf8"),
    )![1]!;
    t.is(readFileSync(join(out, "image-digest.txt"), "utf8").trim(), digest, "image-digest.txt is the config digest");
    return { rootfs, config, signed: { digest, signature, verifierKey } };
  }
  // No buildah: the same filesystem, with the Dockerfile's runtime settings.
  const { stdout } = await run("bash", [join(root, "scripts/image-rootfs.sh"), work, join(work, "release.key")], {
    cwd: root,
    timeout: 1_200_000,
  });
  t.log(stdout.trim());
  const dockerfile = readFileSync(join(root, "image/Dockerfile"), "utf8");
  // The final stage's instructions (the last of each), continuation lines joined.
  const finalStage = dockerfile.slice(dockerfile.lastIndexOf("\nFROM ")).replace(/\\\n\s*/g, " ");
  const instruction = (name: string) => new RegExp(`^${name} (.*)$`, "m").exec(finalStage)![1]!;
  return {
    rootfs: join(work, "rootfs"),
    config: {
      User: instruction("USER"),
      Entrypoint: JSON.parse(instruction("ENTRYPOINT")) as string[],
      Cmd: JSON.parse(instruction("CMD")) as string[],
      Env: instruction("ENV").trim().split(/\s+/),
    },
  };
}

// Inside a private mount namespace: the image's tree read-only, a tmpfs for /tmp and for the data
// volume (owned by the image's user), /proc and the few device nodes, then the entrypoint as the
// image's user with only the image's environment. Every exec replaces the shell, so the pid the
// test holds is the kernel's, and the mounts vanish with it.
const RUNTIME = `
set -eu
R="$1"; shift
mkdir -p "$R/proc" "$R/dev"
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o uid=65532,gid=65532,mode=0750 tmpfs "$R/var/lib/nops"
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=0755 tmpfs "$R/dev"
for d in null zero random urandom; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
exec "$@"`;

test("image - the signature binds the config digest and the release key", async (t) => {
  const signer = generateSigner("nops-kernel-release");
  const key = parseVerifierKey(encodeVerifierKey(signer.name, signer.publicKey));
  const digest = `sha256:${"ab".repeat(32)}`;
  const envelope = await signImage({
    name: "registry.example/nops-kernel:1",
    configDigest: digest,
    kernelVersion: "0.1.0",
    releaseAttestationSha256: "cd".repeat(32),
    builderId: "test",
    signer,
  });
  t.is(verifyImage(envelope, digest, [key]).statement.subject[0].name, "registry.example/nops-kernel:1");
  t.throws(() => verifyImage(envelope, `sha256:${"ef".repeat(32)}`, [key]), { message: /not for sha256:efef/ });
  const stranger = generateSigner("nops-kernel-release");
  t.throws(
    () => verifyImage(envelope, digest, [parseVerifierKey(encodeVerifierKey(stranger.name, stranger.publicKey))]),
    {
      message: /does not trust/,
    },
  );
  t.throws(() => verifyImage(envelope, "sha256:xyz", [key]), { message: /image digest must be sha256:<64/ });
});

test("image - the entrypoint serves /healthz on a read-only root as the non-root user, release enforced", async (t) => {
  t.timeout(1_800_000);
  const image = await theImage(t);
  const { rootfs, config } = image;
  if (image.signed) {
    const { digest, signature, verifierKey } = image.signed;
    // Signed by the release key, and naming the kernel release the image holds.
    const { statement, signedBy } = verifyImage(signature, digest, [parseVerifierKey(verifierKey)]);
    t.is(signedBy, "nops-kernel-release");
    t.is(
      statement.predicate.releaseAttestation.sha256,
      sha256Hex(readFileSync(join(rootfs, "opt/nops-kernel/release/attestation.dsse.json"))),
    );
  }
  // What the image holds, and what it must not.
  t.true(existsSync(join(rootfs, "usr/local/bin/node")));
  t.true(existsSync(join(rootfs, "opt/nops-kernel/release/attestation.dsse.json")));
  t.true(existsSync(join(rootfs, "etc/ssl/certs/ca-certificates.crt")));
  t.true(existsSync(join(rootfs, "usr/local/lib/libjemalloc.so.2")), "the allocator the image preloads");
  t.regex(readFileSync(join(rootfs, "etc/passwd"), "utf8"), /^nops:x:65532:65532:/m);
  for (const absent of ["bin/sh", "usr/bin/apt-get", "usr/bin/dpkg", "usr/bin/npm", "usr/local/bin/npm"])
    t.false(existsSync(join(rootfs, absent)), `${absent} is not in the image`);
  t.false(existsSync(join(rootfs, "opt/nops-kernel/node_modules/typescript")), "no development dependency");
  t.is(config.User, "65532:65532");

  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const env = [
    ...(config.Env ?? []),
    "NOPS_GRPC_HOST=127.0.0.1",
    `NOPS_GRPC_PORT=${grpcPort}`,
    "NOPS_HTTP_HOST=127.0.0.1",
    `NOPS_HTTP_PORT=${httpPort}`,
    "NOPS_IDENTITY_SOURCE=none",
    "NOPS_NATS_LEAF=off",
  ];
  const entry = [...(config.Entrypoint ?? []), ...(config.Cmd ?? [])];
  const kernel = spawnChild(
    t,
    "unshare",
    [
      "--mount",
      "--propagation",
      "private",
      "sh",
      "-c",
      RUNTIME,
      "runtime",
      rootfs,
      "env",
      "-i",
      ...env,
      CHROOT,
      `--userspec=${config.User}`,
      rootfs,
      ...entry,
    ],
    {},
  );
  await waitFor(
    async () => kernel.proc.exitCode !== null || (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).status === 200,
    "the image's kernel to answer /healthz",
    300_000,
    200,
  );
  t.is(kernel.proc.exitCode, null, `the kernel exited: ${kernel.output()}`);
  t.regex(kernel.output(), /"msg":"release verified"/, kernel.output());
  // The kernel runs as the image's user, on a read-only root.
  const pid = kernel.proc.pid!;
  t.regex(readFileSync(`/proc/${pid}/status`, "utf8"), /^Uid:\s+65532\s+65532\s+65532\s+65532$/m);
  // On jemalloc (LD_PRELOAD): the loader only warns when a preload is missing, so look at what is mapped.
  t.regex(readFileSync(`/proc/${pid}/maps`, "utf8"), /\/usr\/local\/lib\/libjemalloc\.so\.2$/m);
  const rootMount = readFileSync(`/proc/${pid}/mountinfo`, "utf8")
    .split("\n")
    .find((line) => line.split(" ")[4] === "/");
  t.regex(rootMount ?? "", /^\S+ \S+ \S+ \S+ \/ ro[, ]/, `the root mount: ${rootMount}`);
  process.kill(kernel.proc.pid!, "SIGTERM");
  t.is(await kernel.exited, 0, kernel.output());
});
