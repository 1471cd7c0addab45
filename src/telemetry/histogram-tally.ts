import { ValueType, type Attributes, type Histogram, type Meter, type MetricOptions } from "@opentelemetry/api";
import { hrTime } from "@opentelemetry/core";
import type { Resource } from "@opentelemetry/resources";
import {
  AggregationTemporality,
  DataPointType,
  type CollectionResult,
  type DataPoint,
  type Histogram as HistogramPoint,
  type MetricData,
  type MetricProducer,
} from "@opentelemetry/sdk-metrics";
import { DEFAULT_TALLY_MAX_SERIES, TALLY_OVERFLOW_ATTRIBUTES } from "./tally.js";

/** sdk-metrics' default explicit bucket boundaries, for a histogram created without advice. */
const SDK_DEFAULT_BOUNDARIES = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000];

/** How the histogram tallies fold attributes, as the MeterProvider's views would. */
export interface HistogramTallyOptions {
  /** The resource the reader reports (it keeps its SDK's own and takes a producer's scope metrics only). */
  resource: Resource;
  /** Attribute names left out of every series (the views' deny-list): their series add up into one. */
  dropAttributes: readonly string[];
  /** Most series per histogram, the overflow series included. @default DEFAULT_TALLY_MAX_SERIES */
  maxSeries?: number;
}

/**
 * Histograms summed in process and reported to the Prometheus reader as a MetricProducer: sdk-metrics
 * hashes a measurement's attributes (their keys sorted, then JSON) on every record, about 0.8 KB and a
 * sort per call for each of an Invoke's three histograms. A series is found by its attributes object
 * when that object is frozen (a tally's series attributes, a module constant): one WeakMap lookup; any
 * other object is hashed as sdk-metrics does. Buckets, sum, count, min and max are the SDK's
 * (explicit bucket boundaries from the instrument's advice, else its defaults; a value lands in the
 * first bucket whose upper bound is >= it; negative and NaN values are ignored), and so is the
 * cardinality bound (series past it count in {"otel.metric.overflow": true}).
 */
export interface HistogramTallies extends MetricProducer {
  /** `meter` whose createHistogram is answered by these tallies; every other instrument is its own. */
  wrap(meter: Meter, scope: string): Meter;
}

interface Series {
  readonly attributes: Attributes;
  readonly counts: number[];
  sum: number;
  count: number;
  min: number;
  max: number;
}

interface Instrument {
  readonly scope: string;
  readonly descriptor: MetricData["descriptor"];
  readonly boundaries: readonly number[];
  readonly series: Map<string, Series>;
  readonly byObject: WeakMap<Attributes, Series>;
}

// sdk-metrics' attribute hash: stable under key order.
function hashAttributes(attributes: Attributes): string {
  const keys = Object.keys(attributes).sort();
  return keys.length === 0 ? "" : JSON.stringify(keys.map((k) => [k, attributes[k]]));
}

const OVERFLOW_KEY = hashAttributes(TALLY_OVERFLOW_ATTRIBUTES);
const NO_ATTRIBUTES: Attributes = Object.freeze({});

function boundariesOf(options: MetricOptions | undefined): number[] {
  const advised = options?.advice?.explicitBucketBoundaries;
  if (!advised) return SDK_DEFAULT_BOUNDARIES;
  return advised.filter((b) => Number.isFinite(b)).sort((a, b) => a - b);
}

/** Creates the histogram tallies; pass them to the Prometheus exporter as a metric producer. */
export function createHistogramTallies(options: HistogramTallyOptions): HistogramTallies {
  const drop = new Set(options.dropAttributes);
  const maxSeries = options.maxSeries ?? DEFAULT_TALLY_MAX_SERIES;
  const startTime = hrTime();
  const instruments = new Map<string, Instrument>();

  function seriesOf(instrument: Instrument, attributes: Attributes): Series {
    let kept = attributes;
    if (drop.size > 0 && Object.keys(attributes).some((k) => drop.has(k))) {
      kept = Object.fromEntries(Object.entries(attributes).filter(([k]) => !drop.has(k)));
    }
    // A new series past the bound (room is kept for the overflow series) counts in the overflow series.
    let key = hashAttributes(kept);
    if (!instrument.series.has(key) && instrument.series.size >= maxSeries - 1) {
      key = OVERFLOW_KEY;
      kept = TALLY_OVERFLOW_ATTRIBUTES;
    }
    let series = instrument.series.get(key);
    if (!series) {
      series = {
        attributes: Object.isFrozen(kept) ? kept : Object.freeze({ ...kept }),
        counts: new Array<number>(instrument.boundaries.length + 1).fill(0),
        sum: 0,
        count: 0,
        min: Infinity,
        max: -Infinity,
      };
      instrument.series.set(key, series);
    }
    return series;
  }

  function histogram(instrument: Instrument): Histogram {
    const { boundaries, byObject } = instrument;
    return {
      record(value, attributes = NO_ATTRIBUTES) {
        if (!(value >= 0)) return;
        let series = byObject.get(attributes);
        if (series === undefined) {
          series = seriesOf(instrument, attributes);
          if (Object.isFrozen(attributes)) byObject.set(attributes, series);
        }
        let i = 0;
        while (i < boundaries.length && boundaries[i]! < value) i++;
        series.counts[i]!++;
        series.sum += value;
        series.count++;
        if (value < series.min) series.min = value;
        if (value > series.max) series.max = value;
      },
    };
  }

  return {
    wrap(meter, scope) {
      // The meter's own methods, but for createHistogram (its prototype holds the rest).
      const wrapped = Object.create(meter) as Meter;
      wrapped.createHistogram = (name: string, opts?: MetricOptions) => {
        let instrument = instruments.get(name);
        if (!instrument) {
          instrument = {
            scope,
            descriptor: {
              name,
              description: opts?.description ?? "",
              unit: opts?.unit ?? "",
              valueType: opts?.valueType ?? ValueType.DOUBLE,
            },
            boundaries: boundariesOf(opts),
            series: new Map(),
            byObject: new WeakMap(),
          };
          instruments.set(name, instrument);
        }
        return histogram(instrument);
      };
      return wrapped;
    },

    collect(): Promise<CollectionResult> {
      const endTime = hrTime();
      const byScope = new Map<string, MetricData[]>();
      for (const instrument of instruments.values()) {
        if (instrument.series.size === 0) continue;
        const dataPoints: DataPoint<HistogramPoint>[] = [...instrument.series.values()].map((s) => ({
          attributes: s.attributes,
          startTime,
          endTime,
          value: {
            buckets: { boundaries: [...instrument.boundaries], counts: [...s.counts] },
            sum: s.sum,
            count: s.count,
            min: s.min,
            max: s.max,
          },
        }));
        const metrics = byScope.get(instrument.scope) ?? [];
        metrics.push({
          descriptor: instrument.descriptor,
          aggregationTemporality: AggregationTemporality.CUMULATIVE,
          dataPointType: DataPointType.HISTOGRAM,
          dataPoints,
        });
        byScope.set(instrument.scope, metrics);
      }
      return Promise.resolve({
        resourceMetrics: {
          resource: options.resource,
          scopeMetrics: [...byScope].map(([name, metrics]) => ({ scope: { name }, metrics })),
        },
        errors: [],
      });
    },
  };
}
