import type { Attributes, Meter, ObservableResult } from "@opentelemetry/api";

/**
 * Series a tally keeps, the overflow series included: sdk-metrics' default cardinality limit per
 * instrument (DeltaMetricProcessor: 2000), so the SDK never folds a tally's series itself.
 */
export const DEFAULT_TALLY_MAX_SERIES = 2000;

/** Attributes of the series that counts label tuples past the bound, as sdk-metrics names it. */
export const TALLY_OVERFLOW_ATTRIBUTES: Attributes = Object.freeze({ "otel.metric.overflow": true });

// add() takes its label values as named parameters: a rest parameter would allocate an array per call.
const MAX_LABELS = 4;

/** One label value per label name, in order. */
export type TallyValues<L extends readonly string[]> = { readonly [K in keyof L]: string };

/** How createTally names and bounds the counter. */
export interface TallyOptions<L extends readonly string[]> {
  /** Label names, fixed for the tally's life; add() takes their values in this order (at most 4). */
  labels: L;
  /** The instrument's description. */
  description: string;
  /** The instrument's unit. @default none */
  unit?: string;
  /**
   * Labels left out of the series: their values are taken and ignored, so the series of all their
   * values add up into one. Use it for a label the MeterProvider's views would drop: sdk-metrics
   * applies a view's attributes processor to observed values too, but keeps the last of the
   * series it merges instead of their sum (AsyncMetricStorage.record). @default []
   */
  omit?: readonly L[number][];
  /**
   * Most series kept, the overflow series included. A label tuple first seen past it is counted in
   * the one series {"otel.metric.overflow": true} and takes no memory of its own, so hostile label
   * values cannot grow the tally. @default DEFAULT_TALLY_MAX_SERIES
   */
  maxSeries?: number;
}

/** A monotonic counter summed in process and reported as an OpenTelemetry ObservableCounter. */
export interface Tally<L extends readonly string[]> {
  /**
   * Adds value (ignored unless a finite number >= 0; the series is created all the same) to the series of
   * these label values. Returns the series' attributes (frozen, the same object on every call), for a
   * histogram recorded beside it.
   */
  add(value: number, ...values: TallyValues<L>): Attributes;
}

interface Series {
  readonly attributes: Attributes;
  total: number;
}

// Inner nodes map a label value to the next level; the last level maps it to its series.
type Level = Map<string, Level | Series>;

/**
 * Creates a tally: a counter whose series are found by walking nested Maps keyed by the label
 * values, each series holding its attributes (built once) and its running total, observed at each
 * collection. Unlike a sdk-metrics Counter, an add() of a known series allocates nothing and hashes
 * no attributes (no Object.keys/sort/stringify, no timestamp, no context lookup).
 * An ObservableCounter is exported as a Prometheus counter, with `_total` appended when missing.
 */
export function createTally<const L extends readonly string[]>(
  meter: Meter,
  name: string,
  options: TallyOptions<L>,
): Tally<L> {
  if (options.labels.length > MAX_LABELS) throw new RangeError(`tally ${name}: at most ${MAX_LABELS} labels`);
  const omit = new Set<string>(options.omit ?? []);
  // Positions of the labels that make up a series, in order.
  const kept: number[] = [];
  options.labels.forEach((label, i) => {
    if (!omit.has(label)) kept.push(i);
  });
  if (kept.length === 0) throw new RangeError(`tally ${name}: every label is omitted (a plain Counter is that)`);
  const maxSeries = options.maxSeries ?? DEFAULT_TALLY_MAX_SERIES;
  if (!Number.isInteger(maxSeries) || maxSeries < 1) throw new RangeError(`tally ${name}: maxSeries must be >= 1`);

  const all: Series[] = [];
  const root: Level = new Map();
  let overflow: Series | undefined;
  const depth = kept.length;
  const last = depth - 1;

  function newSeries(values: readonly string[]): Series {
    const attributes: Attributes = {};
    kept.forEach((at, i) => (attributes[options.labels[at]!] = values[i]));
    const series: Series = { attributes: Object.freeze(attributes), total: 0 };
    all.push(series);
    return series;
  }

  // The value of the label at position `at` among add()'s arguments.
  const valueAt = (at: number, a?: string, b?: string, c?: string, d?: string): string =>
    String(at === 0 ? a : at === 1 ? b : at === 2 ? c : d);

  function seriesOf(a?: string, b?: string, c?: string, d?: string): Series {
    let level = root;
    for (let i = 0; i < depth; i++) {
      const next = level.get(valueAt(kept[i]!, a, b, c, d));
      if (next === undefined) return create(level, i, a, b, c, d);
      if (i === last) return next as Series;
      level = next as Level;
    }
    throw new Error("unreachable");
  }

  // A new label tuple: below the bound it gets its series (and the levels leading to it), past it
  // the overflow series, creating nothing on the way.
  function create(from: Level, fromDepth: number, a?: string, b?: string, c?: string, d?: string): Series {
    if (all.length >= maxSeries - 1) {
      if (!overflow) {
        overflow = { attributes: TALLY_OVERFLOW_ATTRIBUTES, total: 0 };
        all.push(overflow);
      }
      return overflow;
    }
    const values = kept.map((at) => valueAt(at, a, b, c, d));
    const series = newSeries(values);
    let level = from;
    for (let i = fromDepth; i < last; i++) {
      const next: Level = new Map();
      level.set(values[i]!, next);
      level = next;
    }
    level.set(values[last]!, series);
    return series;
  }

  const counter = meter.createObservableCounter(name, {
    description: options.description,
    ...(options.unit === undefined ? {} : { unit: options.unit }),
  });
  counter.addCallback((result: ObservableResult) => {
    for (const s of all) result.observe(s.total, s.attributes);
  });

  const add = (value: number, a?: string, b?: string, c?: string, d?: string): Attributes => {
    const series = seriesOf(a, b, c, d);
    // Monotonic, like Counter.add: a negative or non-finite value is dropped.
    if (value >= 0 && value !== Infinity) series.total += value;
    return series.attributes;
  };
  return { add: add as Tally<L>["add"] };
}
