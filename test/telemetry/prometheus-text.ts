/** One sample line of the Prometheus text format. */
export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A metric family: its TYPE and the samples under it (histogram _bucket/_sum/_count included). */
export interface PromFamily {
  type: string;
  help: string;
  samples: PromSample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;

function parseValue(s: string): number {
  if (s === "+Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  if (s === "NaN") return NaN;
  const n = Number(s);
  if (s === "" || Number.isNaN(n)) throw new Error(`bad sample value ${JSON.stringify(s)}`);
  return n;
}

function parseSample(line: string): PromSample {
  const name = NAME.exec(line)?.[0];
  if (!name) throw new Error(`bad sample line ${JSON.stringify(line)}`);
  let i = name.length;
  const labels: Record<string, string> = {};
  if (line[i] === "{") {
    i++;
    while (line[i] !== "}") {
      const key = NAME.exec(line.slice(i))?.[0];
      if (!key || line[i + key.length] !== "=" || line[i + key.length + 1] !== '"')
        throw new Error(`bad label in ${JSON.stringify(line)}`);
      i += key.length + 2;
      let value = "";
      for (;;) {
        const c = line[i++];
        if (c === undefined) throw new Error(`unterminated label value in ${JSON.stringify(line)}`);
        if (c === '"') break;
        if (c === "\\") {
          const e = line[i++];
          value += e === "n" ? "\n" : (e ?? "");
        } else value += c;
      }
      labels[key] = value;
      if (line[i] === ",") i++;
      else if (line[i] !== "}") throw new Error(`expected , or } in ${JSON.stringify(line)}`);
    }
    i++;
  }
  const [value, timestamp, ...rest] = line.slice(i).trim().split(/\s+/);
  if (rest.length || (timestamp !== undefined && !/^-?\d+$/.test(timestamp)))
    throw new Error(`trailing data in ${JSON.stringify(line)}`);
  return { name, labels, value: parseValue(value ?? "") };
}

/** Parses the Prometheus text exposition format 0.0.4; throws on any malformed line. */
export function parsePrometheusText(text: string): Map<string, PromFamily> {
  const families = new Map<string, PromFamily>();
  const family = (name: string): PromFamily => {
    let f = families.get(name);
    if (!f) families.set(name, (f = { type: "untyped", help: "", samples: [] }));
    return f;
  };
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    if (line.startsWith("#")) {
      const m = /^#\s+(HELP|TYPE|UNIT)\s+([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\s+(.*))?$/.exec(line);
      if (!m) continue; // a plain comment
      const f = family(m[2]!);
      if (m[1] === "TYPE") f.type = m[3] ?? "";
      if (m[1] === "HELP") f.help = m[3] ?? "";
      continue;
    }
    const s = parseSample(line);
    const base = [...families.keys()].find(
      (k) => s.name === k || (/_(bucket|sum|count)$/.test(s.name) && s.name.replace(/_(bucket|sum|count)$/, "") === k),
    );
    family(base ?? s.name).samples.push(s);
  }
  return families;
}

/**
 * The value of the sample named `name` whose labels are exactly `labels` (or, with `partial`,
 * the sum of every sample whose labels include `labels`); undefined when none matches.
 */
export function sample(
  families: Map<string, PromFamily>,
  name: string,
  labels: Record<string, string>,
  partial = false,
): number | undefined {
  const matches: PromSample[] = [];
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name !== name) continue;
      const want = Object.entries(labels);
      if (!want.every(([k, v]) => s.labels[k] === v)) continue;
      if (!partial && Object.keys(s.labels).length !== want.length) continue;
      matches.push(s);
    }
  }
  if (matches.length === 0) return undefined;
  if (!partial && matches.length > 1)
    throw new Error(`${matches.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return matches.reduce((sum, s) => sum + s.value, 0);
}
