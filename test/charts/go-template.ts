// A deliberately small interpreter for the subset of Go text/template + Helm/sprig functions the
// nops-kernel chart uses. No helm binary exists on our machines; this lets the tests render the
// chart and check the output with real parsers (YAML, nats-server, the kernel's options resolver).
// Anything outside the subset throws, so a template change cannot silently render differently.
import { createHash } from "node:crypto";
import { stringify as toYamlText } from "yaml";

/** A lexed piece of a template: literal text or the inside of one {{ }} action. */
export type TemplateToken =
  | { kind: "text"; value: string }
  | { kind: "action"; value: string; trimLeft: boolean; trimRight: boolean; line: number };

/** An unbalanced or unsupported template, or a `fail`/`required` hit; the message names the file and line. */
export class TemplateError extends Error {
  override name = "TemplateError";
  /** True once the message carries a "file:line:" prefix. */
  located = false;
}

/** Go ints (results of int/int64/len) print as integers; plain YAML numbers are float64 in Helm. */
class GoInt {
  constructor(readonly value: bigint) {}
}

/** Splits a template into text and actions, honouring strings, raw strings and comments inside actions. */
export function lexTemplate(source: string, file: string): TemplateToken[] {
  const tokens: TemplateToken[] = [];
  const lineAt = (i: number): number => source.slice(0, i).split("\n").length;
  let i = 0;
  while (i < source.length) {
    const open = source.indexOf("{{", i);
    const strayClose = source.indexOf("}}", i);
    if (strayClose !== -1 && (open === -1 || strayClose < open)) {
      throw new TemplateError(`${file}:${lineAt(strayClose)}: "}}" without "{{"`);
    }
    if (open === -1) {
      tokens.push({ kind: "text", value: source.slice(i) });
      break;
    }
    if (open > i) tokens.push({ kind: "text", value: source.slice(i, open) });
    let j = open + 2;
    const trimLeft = source[j] === "-" && /\s/.test(source[j + 1] ?? "");
    if (trimLeft) j += 1;
    const start = j;
    let end = -1;
    while (j < source.length) {
      const c = source[j];
      if (source.startsWith("/*", j)) {
        const close = source.indexOf("*/", j + 2);
        if (close === -1) throw new TemplateError(`${file}:${lineAt(j)}: unterminated comment`);
        j = close + 2;
      } else if (c === '"' || c === "'") {
        j += 1;
        while (j < source.length && source[j] !== c) j += source[j] === "\\" ? 2 : 1;
        if (j >= source.length) throw new TemplateError(`${file}:${lineAt(open)}: unterminated string in action`);
        j += 1;
      } else if (c === "`") {
        const close = source.indexOf("`", j + 1);
        if (close === -1) throw new TemplateError(`${file}:${lineAt(open)}: unterminated raw string in action`);
        j = close + 1;
      } else if (source.startsWith("{{", j)) {
        throw new TemplateError(`${file}:${lineAt(j)}: "{{" inside an action opened at line ${lineAt(open)}`);
      } else if (source.startsWith("}}", j)) {
        end = j;
        break;
      } else {
        j += 1;
      }
    }
    if (end === -1) throw new TemplateError(`${file}:${lineAt(open)}: "{{" never closed`);
    let body = source.slice(start, end);
    const trimRight = /\s-$/.test(body);
    if (trimRight) body = body.slice(0, -1);
    tokens.push({ kind: "action", value: body.trim(), trimLeft, trimRight, line: lineAt(open) });
    i = end + 2;
  }
  return tokens;
}

type Node =
  | { kind: "text"; value: string }
  | { kind: "output"; expr: string; line: number }
  | { kind: "assign"; name: string; expr: string; line: number }
  | { kind: "if" | "with" | "range"; branches: { expr: string | null; body: Node[] }[]; line: number };

const isComment = (a: string): boolean => a.startsWith("/*") && a.endsWith("*/");

/** Parses tokens into a tree, checking that if/with/range/define blocks are balanced. */
function parse(tokens: TemplateToken[], file: string, defines: Map<string, Node[]>): Node[] {
  // Apply trim markers to the neighbouring text first (Go text/template semantics).
  const toks = tokens.map((t) => ({ ...t }));
  toks.forEach((t, k) => {
    if (t.kind !== "action") return;
    const prev = toks[k - 1];
    const next = toks[k + 1];
    if (t.trimLeft && prev?.kind === "text") prev.value = prev.value.replace(/\s+$/, "");
    if (t.trimRight && next?.kind === "text") next.value = next.value.replace(/^\s+/, "");
  });
  const root: Node[] = [];
  type Frame = {
    node: Extract<Node, { branches: unknown }> | { kind: "define"; name: string; body: Node[] };
    line: number;
  };
  const stack: Frame[] = [];
  const current = (): Node[] => {
    const top = stack.at(-1);
    if (!top) return root;
    return top.node.kind === "define" ? top.node.body : (top.node.branches.at(-1) as { body: Node[] }).body;
  };
  for (const t of toks) {
    if (t.kind === "text") {
      if (t.value) current().push({ kind: "text", value: t.value });
      continue;
    }
    const a = t.value;
    if (isComment(a)) continue;
    const head = /^(\w+)\b\s*(.*)$/s.exec(a);
    const word = head?.[1] ?? "";
    const rest = head?.[2] ?? "";
    if (word === "if" || word === "with" || word === "range") {
      const node: Extract<Node, { branches: unknown }> = {
        kind: word,
        branches: [{ expr: rest, body: [] }],
        line: t.line,
      };
      current().push(node);
      stack.push({ node, line: t.line });
    } else if (word === "define") {
      const name = JSON.parse(rest) as string;
      stack.push({ node: { kind: "define", name, body: [] }, line: t.line });
    } else if (word === "else") {
      const top = stack.at(-1);
      if (!top || top.node.kind === "define")
        throw new TemplateError(`${file}:${t.line}: "else" outside if/with/range`);
      const cond = rest.startsWith("if ") ? rest.slice(3) : null;
      if (cond !== null && top.node.kind !== "if") throw new TemplateError(`${file}:${t.line}: "else if" outside if`);
      top.node.branches.push({ expr: cond, body: [] });
    } else if (word === "end") {
      const top = stack.pop();
      if (!top) throw new TemplateError(`${file}:${t.line}: "end" without an open block`);
      if (top.node.kind === "define") defines.set(top.node.name, top.node.body);
    } else if (/^\$\w+\s*:?=/.test(a)) {
      const m = /^\$(\w+)\s*:?=\s*(.*)$/s.exec(a) as RegExpExecArray;
      current().push({ kind: "assign", name: m[1] as string, expr: m[2] as string, line: t.line });
    } else if (["block", "template", "break", "continue"].includes(word)) {
      throw new TemplateError(`${file}:${t.line}: "${word}" is outside the supported subset`);
    } else {
      current().push({ kind: "output", expr: a, line: t.line });
    }
  }
  const open = stack.at(-1);
  if (open) throw new TemplateError(`${file}:${open.line}: "${open.node.kind}" block is never closed with "end"`);
  return root;
}

/** Splits a pipeline or command into top-level pieces, keeping strings and parentheses intact. */
function splitTop(expr: string, sep: (c: string) => boolean): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = "";
  for (let i = 0; i < expr.length; i++) {
    const c = expr[i] as string;
    if (c === '"' || c === "`") {
      let j = i + 1;
      while (j < expr.length && expr[j] !== c) j += c === '"' && expr[j] === "\\" ? 2 : 1;
      cur += expr.slice(i, j + 1);
      i = j;
      continue;
    }
    if (c === "(") depth++;
    if (c === ")") depth--;
    if (depth === 0 && sep(c)) {
      if (cur.trim()) out.push(cur.trim());
      cur = "";
    } else {
      cur += c;
    }
  }
  if (cur.trim()) out.push(cur.trim());
  return out;
}

/** Go template truthiness: false, 0, nil and empty strings/arrays/maps are false. */
function truthy(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === "") return false;
  if (v instanceof GoInt) return v.value !== 0n;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === "object") return Object.keys(v).length > 0;
  return true;
}

/** fmt %v of a value as Go prints it; float64 switches to exponent form from 1e+06 like Helm does. */
function goString(v: unknown): string {
  if (v === undefined || v === null) return "";
  if (v instanceof GoInt) return v.value.toString();
  if (typeof v === "number") {
    if (v === 0) return "0";
    const exp = Math.floor(Math.log10(Math.abs(v)));
    // strconv 'g' with shortest precision switches to %e at exponent 6 (why Helm prints 1e+06).
    if (exp < -4 || exp >= 6) {
      const [mant, e] = v.toExponential().split("e") as [string, string];
      const n = Number(e);
      return `${mant}e${n < 0 ? "-" : "+"}${String(Math.abs(n)).padStart(2, "0")}`;
    }
    return String(v);
  }
  if (typeof v === "string" || typeof v === "boolean") return String(v);
  throw new TemplateError(`cannot print ${JSON.stringify(v)} (Go would print its fmt form)`);
}

function toNumber(v: unknown): number {
  if (v instanceof GoInt) return Number(v.value);
  if (typeof v === "number") return v;
  if (typeof v === "string" && v.trim() !== "" && Number.isFinite(Number(v))) return Number(v);
  return 0;
}

function indentLines(text: string, n: number): string {
  const pad = " ".repeat(n);
  return text
    .split("\n")
    .map((l) => pad + l)
    .join("\n");
}

function plain(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (_k, x: unknown) => (x instanceof GoInt ? Number(x.value) : x))) as unknown;
}

/** A chart's templates, parsed once and renderable with any values. */
export interface TemplateSet {
  /** Template file names relative to the chart root, e.g. "templates/statefulset.yaml". */
  files: string[];
  /** Renders one file with the given top-level object (.Values, .Release, .Chart, ...). */
  render(file: string, root: Record<string, unknown>): string;
}

/** Parses every template (helpers first, so their defines are known) into a renderable set. */
export function createTemplateSet(chartName: string, sources: Record<string, string>): TemplateSet {
  const defines = new Map<string, Node[]>();
  const trees = new Map<string, Node[]>();
  for (const [file, text] of Object.entries(sources)) {
    trees.set(file, parse(lexTemplate(text, file), file, defines));
  }

  function renderNodes(
    nodes: Node[],
    dot: unknown,
    root: Record<string, unknown>,
    vars: Map<string, unknown>,
    file: string,
  ): string {
    let out = "";
    for (const n of nodes) {
      try {
        if (n.kind === "text") out += n.value;
        else if (n.kind === "output") out += goString(evalPipeline(n.expr, dot, root, vars));
        else if (n.kind === "assign") vars.set(n.name, evalPipeline(n.expr, dot, root, vars));
        else if (n.kind === "if") {
          const hit = n.branches.find((b) => b.expr === null || truthy(evalPipeline(b.expr, dot, root, vars)));
          if (hit) out += renderNodes(hit.body, dot, root, vars, file);
        } else if (n.kind === "with") {
          const [first, other] = n.branches;
          const v = evalPipeline(first?.expr ?? "", dot, root, vars);
          if (truthy(v)) out += renderNodes(first?.body ?? [], v, root, vars, file);
          else if (other) out += renderNodes(other.body, dot, root, vars, file);
        } else {
          const [first, other] = n.branches;
          const v = evalPipeline(first?.expr ?? "", dot, root, vars);
          const items = Array.isArray(v)
            ? v
            : v && typeof v === "object"
              ? Object.keys(v)
                  .sort()
                  .map((k) => (v as Record<string, unknown>)[k])
              : [];
          if (items.length === 0 && other) out += renderNodes(other.body, dot, root, vars, file);
          for (const item of items) out += renderNodes(first?.body ?? [], item, root, vars, file);
        }
      } catch (e) {
        if (e instanceof TemplateError && !e.located) {
          const located = new TemplateError(`${file}:${"line" in n ? n.line : "?"}: ${e.message}`, { cause: e });
          located.located = true;
          throw located;
        }
        throw e;
      }
    }
    return out;
  }

  function include(name: string, dot: unknown, root: Record<string, unknown>): string {
    const define = defines.get(name);
    if (define) return renderNodes(define, dot, root, new Map(), `define ${name}`);
    const file = name.startsWith(`${chartName}/`) ? name.slice(chartName.length + 1) : name;
    const tree = trees.get(file);
    if (!tree) throw new TemplateError(`include of unknown template "${name}"`);
    return renderNodes(tree, dot, root, new Map(), file);
  }

  function evalTerm(term: string, dot: unknown, root: Record<string, unknown>, vars: Map<string, unknown>): unknown {
    if (term.startsWith("(") && term.endsWith(")")) return evalPipeline(term.slice(1, -1), dot, root, vars);
    if (term.startsWith('"')) return JSON.parse(term) as string;
    if (term.startsWith("`")) return term.slice(1, -1);
    if (/^-?\d+$/.test(term)) return new GoInt(BigInt(term));
    if (term === "true" || term === "false") return term === "true";
    if (term === ".") return dot;
    let base: unknown;
    let path: string;
    if (term.startsWith("$")) {
      const m = /^\$(\w*)(.*)$/.exec(term) as RegExpExecArray;
      const name = m[1] as string;
      if (name !== "" && !vars.has(name)) throw new TemplateError(`undefined variable $${name}`);
      base = name === "" ? root : vars.get(name);
      path = m[2] as string;
    } else if (term.startsWith(".")) {
      base = dot;
      path = term;
    } else {
      throw new TemplateError(`unsupported term ${term}`);
    }
    for (const key of path.split(".").filter(Boolean)) {
      base = base && typeof base === "object" ? (base as Record<string, unknown>)[key] : undefined;
    }
    return base;
  }

  const functions: Record<string, (...args: unknown[]) => unknown> = {
    quote: (...a) => a.map((x) => JSON.stringify(goString(x))).join(" "),
    int: (x) => new GoInt(BigInt(Math.trunc(toNumber(x)))),
    int64: (x) => new GoInt(BigInt(Math.trunc(toNumber(x)))),
    toJson: (x) => JSON.stringify(plain(x)),
    toYaml: (x) => toYamlText(plain(x), { lineWidth: 0 }).replace(/\n$/, ""),
    nindent: (n, s) => "\n" + indentLines(goString(s), toNumber(n)),
    indent: (n, s) => indentLines(goString(s), toNumber(n)),
    print: (...a) => a.map(goString).join(""),
    printf: (fmt, ...a) => {
      let k = 0;
      return goString(fmt).replace(/%[sdv%]/g, (m) =>
        m === "%%" ? "%" : goString(m === "%d" ? new GoInt(BigInt(Math.trunc(toNumber(a[k++])))) : a[k++]),
      );
    },
    default: (def, given) => (truthy(given) ? given : def),
    trunc: (n, s) => goString(s).slice(0, toNumber(n)),
    trimSuffix: (suf, s) =>
      goString(s).endsWith(goString(suf)) ? goString(s).slice(0, -goString(suf).length) : goString(s),
    contains: (sub, s) => goString(s).includes(goString(sub)),
    replace: (from, to, s) => goString(s).split(goString(from)).join(goString(to)),
    join: (sep, list) => (list as unknown[]).map(goString).join(goString(sep)),
    sha256sum: (s) => createHash("sha256").update(goString(s)).digest("hex"),
    required: (msg, v) => {
      if (!truthy(v) && v !== false) throw new TemplateError(`required: ${goString(msg)}`);
      return v;
    },
    fail: (msg) => {
      throw new TemplateError(`fail: ${goString(msg)}`);
    },
    and: (...a) => a.find((x) => !truthy(x)) ?? a.at(-1),
    or: (...a) => a.find((x) => truthy(x)) ?? a.at(-1),
    not: (x) => !truthy(x),
    eq: (x, y) => goString(x) === goString(y),
  };

  function evalCommand(
    cmd: string,
    piped: unknown[],
    dot: unknown,
    root: Record<string, unknown>,
    vars: Map<string, unknown>,
  ): unknown {
    const parts = splitTop(cmd, (c) => /\s/.test(c));
    const [head, ...args] = parts;
    if (head === undefined) throw new TemplateError("empty command");
    if (head === "include") {
      const [name, ctx] = args.map((x) => evalTerm(x, dot, root, vars));
      return include(goString(name), ctx, root);
    }
    if (/^[a-zA-Z]\w*$/.test(head) && head !== "true" && head !== "false") {
      const fn = functions[head];
      if (!fn) throw new TemplateError(`function "${head}" is outside the supported subset`);
      return fn(...args.map((x) => evalTerm(x, dot, root, vars)), ...piped);
    }
    if (args.length > 0 || piped.length > 0) throw new TemplateError(`cannot call non-function ${head}`);
    return evalTerm(head, dot, root, vars);
  }

  function evalPipeline(
    expr: string,
    dot: unknown,
    root: Record<string, unknown>,
    vars: Map<string, unknown>,
  ): unknown {
    const cmds = splitTop(expr, (c) => c === "|");
    let value: unknown;
    cmds.forEach((cmd, k) => {
      value = evalCommand(cmd, k === 0 ? [] : [value], dot, root, vars);
    });
    return value;
  }

  return {
    files: [...trees.keys()],
    render: (file, root) => {
      const tree = trees.get(file);
      if (!tree) throw new TemplateError(`no template ${file}`);
      return renderNodes(tree, root, root, new Map(), file);
    },
  };
}
