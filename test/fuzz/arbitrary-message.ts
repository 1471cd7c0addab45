import fc from "fast-check";
import { ScalarType, type DescEnum, type DescField, type DescMessage } from "@bufbuild/protobuf";

// Strings that probe decoders: lone surrogates (not encodable as UTF-8), NUL, RTL override,
// very long runs; plus whatever fast-check's full-unicode generator finds.
const NASTY_STRINGS = ["\ud800", "\udfff", "a\u0000b", "\u202e", "%00", "../../etc/passwd", "x".repeat(5000), ""];

function scalar(type: ScalarType): fc.Arbitrary<unknown> {
  switch (type) {
    case ScalarType.STRING:
      return fc.oneof(fc.string({ unit: "binary", maxLength: 64 }), fc.constantFrom(...NASTY_STRINGS));
    case ScalarType.BYTES:
      return fc.uint8Array({ maxLength: 64 });
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return fc.double();
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return fc.nat({ max: 2 ** 32 - 1 });
    default:
      return fc.integer();
  }
}

function enumValue(e: DescEnum): fc.Arbitrary<number> {
  return fc.oneof(fc.constantFrom(...e.values.map((v) => v.number)), fc.integer({ min: -5, max: 1000 }));
}

function single(field: DescField, depth: number): fc.Arbitrary<unknown> {
  if (field.fieldKind === "scalar") return scalar(field.scalar);
  if (field.fieldKind === "enum") return enumValue(field.enum);
  if (field.fieldKind === "message") return arbitraryInit(field.message, depth + 1);
  if (field.fieldKind === "list") {
    const item =
      field.listKind === "scalar"
        ? scalar(field.scalar)
        : field.listKind === "enum"
          ? enumValue(field.enum)
          : arbitraryInit(field.message, depth + 1);
    return fc.array(item, { maxLength: 4 });
  }
  const value =
    field.mapKind === "scalar"
      ? scalar(field.scalar)
      : field.mapKind === "enum"
        ? enumValue(field.enum)
        : arbitraryInit(field.message, depth + 1);
  const key = field.mapKey === ScalarType.STRING ? fc.string({ maxLength: 16 }) : fc.nat({ max: 1000 }).map(String);
  return fc.dictionary(key, value, { maxKeys: 4 });
}

/**
 * An arbitrary `create(desc, init)` init object for `desc`: every field optional, values of the
 * field's type including edge cases; well-known and recursive types are cut at depth 3.
 */
export function arbitraryInit(desc: DescMessage, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  if (depth > 3 || desc.typeName.startsWith("google.protobuf.")) return fc.constant({});
  const fields: Record<string, fc.Arbitrary<unknown>> = {};
  // Only one member of a oneof may be set: pick at most one per group below.
  for (const field of desc.fields) if (!field.oneof) fields[field.localName] = single(field, depth);
  const oneofs = desc.oneofs.map((o) =>
    fc.option(
      fc.oneof(
        ...o.fields.map((f) => single(f, depth).map((value) => ({ [o.localName]: { case: f.localName, value } }))),
      ),
      { nil: {} },
    ),
  );
  return fc
    .tuple(fc.record(fields, { requiredKeys: [] }), ...oneofs)
    .map(([base, ...sets]) => Object.assign({}, base, ...sets) as Record<string, unknown>);
}

/** A byte mutation: flip, cut, splice or extend, as a fuzzer's havoc stage does. */
export function mutateBytes(bytes: Uint8Array): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    fc.constant(bytes),
    fc.nat({ max: Math.max(0, bytes.length) }).map((n) => bytes.subarray(0, n)),
    fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })).map(([i, b]) => {
      const out = Uint8Array.from(bytes);
      if (out.length) out[i % out.length] = b;
      return out;
    }),
    fc.uint8Array({ maxLength: 32 }).map((tail) => Uint8Array.from([...bytes, ...tail])),
    fc.uint8Array({ maxLength: 128 }),
  );
}
