import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import test from "ava";

const root = new URL("..", import.meta.url).pathname;

test("README - stands alone: every link points at a file inside the repository", (t) => {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const links = [...readme.matchAll(/\]\(([^)]+)\)/g)].map((m) => m[1] ?? "");
  t.true(links.length > 0);
  for (const link of links) {
    t.false(/^[a-z]+:/i.test(link), `${link} leaves the repository`);
    t.false(link.startsWith("../") || link.startsWith("/"), `${link} leaves the repository`);
    t.true(existsSync(join(root, link.split("#")[0] ?? "")), `${link} exists`);
  }
});
