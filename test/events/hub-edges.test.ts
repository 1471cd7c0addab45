import test from "ava";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import bcrypt from "bcryptjs";
import { fromSeed } from "@nats-io/nkeys";
import { ConfigError } from "../../src/common/index.js";
import { edgeLinkPermissions, renderHubConfig, renderLeafConfig } from "../../src/events/nats-config.js";
import { readHubEdgeRegistry } from "../../src/events/hub-edges.js";
import { runHubCommand } from "../../src/kernel/hub-command.js";
import { NATS_SERVER_BIN } from "../helpers/nats-servers.js";

const hubBase = {
  serverName: "hub",
  port: 4222,
  leafPort: 7422,
  domain: "hub",
  storeDir: "/tmp/x",
  user: "admin",
  password: "pw",
};

test("edge link permissions - own domain, prefixes and tenants only; bad input is named", (t) => {
  const p = edgeLinkPermissions({ edgeId: "edge-a", tenants: ["globex", "acme"], password: "x" }, "hub");
  t.true(p.publish.includes("nops.events.acme.>"));
  t.true(p.publish.includes("nops.fed.*.globex.>"));
  t.false(p.publish.some((s) => s === "nops.events.>" || s.includes("edge-b")));
  t.true(p.publish.includes("$JS.hub.API.CONSUMER.CREATE.NOPS_CMD.*.nops.cmd.edge-a.>"));
  t.false(
    p.publish.some((s) => s.includes("STREAM.CREATE")),
    "no hub stream creation unless granted",
  );
  t.deepEqual(
    p.subscribe.filter((s) => s.startsWith("$JS.") && s.endsWith(".API.>")),
    ["$JS.edge-a.API.>"],
    "only its own domain's API",
  );
  const all = edgeLinkPermissions({ edgeId: "e", tenants: ["*"], password: "x", createHubStream: true }, "hub");
  t.true(all.publish.includes("nops.events.>"));
  t.true(all.publish.includes("$JS.hub.API.STREAM.CREATE.NOPS_EDGE_E"));
  t.throws(() => edgeLinkPermissions({ edgeId: "e", tenants: [], password: "x" }, "hub"), {
    instanceOf: ConfigError,
    message: /tenants must list/,
  });
  t.throws(() => edgeLinkPermissions({ edgeId: "e", tenants: ["Acme.>"], password: "x" }, "hub"), {
    instanceOf: ConfigError,
    message: /tenant "Acme.>"/,
  });
  t.throws(() => edgeLinkPermissions({ edgeId: "e.>", tenants: ["acme"], password: "x" }, "hub"), {
    instanceOf: ConfigError,
    message: /edge id/,
  });
});

test("hub config - shared leaf user or per-edge users, not both, not neither, no user twice", (t) => {
  const edge = { edgeId: "a", tenants: ["acme"], password: "x" };
  t.throws(() => renderHubConfig({ ...hubBase, leafUser: "e", leafPassword: "p", edges: [edge] }), {
    message: /not both/,
  });
  t.throws(() => renderHubConfig(hubBase), { message: /set edges/ });
  t.throws(() => renderHubConfig({ ...hubBase, edges: [edge, { ...edge }] }), { message: /appears twice/ });
  t.throws(() => renderHubConfig({ ...hubBase, edges: [{ ...edge, password: 'x" }' }] }), {
    message: /edges.password/,
  });
  const conf = renderHubConfig({
    ...hubBase,
    edges: [edge],
    cluster: { name: "c", port: 6222, routes: ["nats-route://127.0.0.1:6222"] },
  });
  t.regex(conf, /allowed_connection_types: \[ "LEAFNODE" \]/);
  const leaf = renderLeafConfig({
    serverName: "leaf",
    port: 4222,
    domain: "e",
    storeDir: "/tmp/x",
    user: "k",
    password: "p",
    hubUrls: ["nats-leaf://hub-0:7422", "nats-leaf://hub-1:7422"],
    hubNkeySeed: "SUAEXAMPLESEED",
  });
  t.regex(
    leaf,
    /urls: \[ "nats-leaf:\/\/hub-0:7422", "nats-leaf:\/\/hub-1:7422" \], account: "KERNEL", nkey: "SUAEXAMPLESEED"/,
  );
  t.throws(
    () =>
      renderLeafConfig({
        serverName: "l",
        port: 1,
        domain: "e",
        storeDir: "/x",
        user: "k",
        password: "p",
        hubUrl: "nats-leaf://h:1",
        hubUrls: [],
      }),
    { message: /not both/ },
  );
  t.regex(conf, /cluster \{/);
  t.notRegex(conf, /authorization/);
});

test("nops-kernel hub - add-edge writes a 0600 secret and an edge-users.conf nats-server accepts; revoke and list", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "nops-hub-edges-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const registry = join(dir, "edges.json");
  const lines: string[] = [];
  const out = (s: string): void => {
    lines.push(s);
  };
  const secretA = join(dir, "a.secret");
  t.is(
    runHubCommand(
      "add-edge",
      ["--registry", registry, "--edge", "edge-a", "--tenants", "acme,globex", "--secret-out", secretA],
      out,
    ),
    0,
  );
  t.is(
    runHubCommand(
      "add-edge",
      ["--registry", registry, "--edge", "edge-b", "--tenants", "*", "--secret-out", join(dir, "b.secret")],
      out,
    ),
    0,
  );
  for (const f of [secretA, registry, join(dir, "edge-users.conf")]) t.is(statSync(f).mode & 0o777, 0o600, f);
  const secret = readFileSync(secretA, "utf8").trim();
  const reg = readHubEdgeRegistry(registry);
  const a = reg.edges.find((e) => e.edgeId === "edge-a")!;
  t.true(bcrypt.compareSync(secret, a.password ?? ""), "the registry holds the secret's bcrypt hash");
  t.false(readFileSync(join(dir, "edge-users.conf"), "utf8").includes(secret), "never the secret itself");
  t.deepEqual(a.tenants, ["acme", "globex"]);

  // An nkey edge: the seed goes to the edge, only the public key to the hub.
  const seedPath = join(dir, "c.nk");
  t.is(
    runHubCommand(
      "add-edge",
      ["--registry", registry, "--edge", "edge-c", "--tenants", "acme", "--auth", "nkey", "--secret-out", seedPath],
      out,
    ),
    0,
  );
  const seed = readFileSync(seedPath, "utf8").trim();
  t.regex(seed, /^SU[A-Z2-7]+$/);
  const c = readHubEdgeRegistry(registry).edges.find((e) => e.edgeId === "edge-c")!;
  t.is(c.nkey, fromSeed(new TextEncoder().encode(seed)).getPublicKey());
  t.is(c.password, undefined);
  const users = readFileSync(join(dir, "edge-users.conf"), "utf8");
  t.true(users.includes(`nkey: "${c.nkey}"`));
  t.false(users.includes(seed));
  t.throws(
    () =>
      runHubCommand(
        "add-edge",
        [
          "--registry",
          registry,
          "--edge",
          "x",
          "--tenants",
          "a",
          "--auth",
          "jwt",
          "--secret-out",
          join(dir, "x.secret"),
        ],
        out,
      ),
    { message: /--auth must be password or nkey/ },
  );

  // The shipped hub.conf with the generated include passes nats-server's config check.
  copyFileSync(fileURLToPath(new URL("../../nats/hub.conf", import.meta.url)), join(dir, "hub.conf"));
  const env = {
    ...process.env,
    NOPS_HUB_NAME: "hub",
    NOPS_HUB_PORT: "4222",
    NOPS_HUB_LEAF_PORT: "7422",
    NOPS_HUB_DOMAIN: "hub",
    NOPS_JS_STORE_DIR: dir,
    NOPS_HUB_USER: "admin",
    NOPS_HUB_PASSWORD: "pw",
  };
  const check = spawnSync(NATS_SERVER_BIN, ["-c", join(dir, "hub.conf"), "-t"], { env, encoding: "utf8" });
  t.is(check.status, 0, check.stderr);
  t.regex(check.stderr, /configuration file .* is valid/);

  t.throws(
    () =>
      runHubCommand(
        "add-edge",
        ["--registry", registry, "--edge", "edge-a", "--tenants", "acme", "--secret-out", join(dir, "c.secret")],
        out,
      ),
    { instanceOf: ConfigError, message: /already registered/ },
  );
  t.throws(
    () =>
      runHubCommand(
        "add-edge",
        ["--registry", registry, "--edge", "edge-d", "--tenants", "acme", "--secret-out", secretA],
        out,
      ),
    { message: /refusing to overwrite/ },
  );
  t.throws(() => runHubCommand("add-edge", ["--registry", registry, "--bogus", "x"], out), {
    message: /unknown argument --bogus/,
  });
  t.throws(() => runHubCommand("add-edge", ["--registry", registry, "--edge", "x"], out), {
    message: /needs --tenants/,
  });

  lines.length = 0;
  t.is(runHubCommand("revoke-edge", ["--registry", registry, "--edge", "edge-a"], out), 0);
  t.false(readFileSync(join(dir, "edge-users.conf"), "utf8").includes("edge-edge-a"));
  t.throws(() => runHubCommand("revoke-edge", ["--registry", registry, "--edge", "edge-a"], out), {
    message: /not registered/,
  });
  lines.length = 0;
  t.is(runHubCommand("list-edges", ["--registry", registry], out), 0);
  t.is(lines.length, 2);
  t.regex(lines[0]!, /^edge-b\tuser=edge-edge-b\tdomain=edge-b\ttenants=\*/);
  t.regex(lines[1]!, /^edge-c\tnkey=U[A-Z2-7]+\tdomain=edge-c\ttenants=acme/);
});
