import type * as grpc from "@grpc/grpc-js";
import { decodeBinaryHeader, encodeBinaryHeader } from "@connectrpc/connect";

// Names the gRPC transport writes itself: set through a handler's headers they are dropped, never sent
// twice. grpc-retry-pushback-ms (gRPC A6) is the exception a shed or shutdown call carries.
function isTransportHeader(name: string): boolean {
  if (name.startsWith("grpc-")) return name !== "grpc-retry-pushback-ms";
  return name.startsWith(":") || name === "content-type" || name === "te";
}

// A header value as fetch's Headers keeps it: without leading or trailing HTTP whitespace.
const PADDED = /^[\t\n\r ]|[\t\n\r ]$/;
const normalize = (value: string): string =>
  PADDED.test(value) ? value.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "") : value;

/**
 * A handler's request or response headers over the call's gRPC metadata itself: what a handler reads is
 * the metadata grpc-js received, and what it sets is the metadata grpc-js sends, with no copy between
 * fetch Headers and metadata on either side of a call (undici's Headers validated every name, sorted on
 * every iteration and cost three objects per call). Binary (`-bin`) values read and write as base64, as
 * Connect does; a value grpc-js cannot send (not printable ASCII) throws when it is set. Iteration follows
 * the Headers contract: names sorted, a repeated name's values joined by ", ", set-cookie one by one.
 */
export class MetadataHeaders implements Headers {
  constructor(readonly metadata: grpc.Metadata) {}

  get(name: string): string | null {
    const values = this.metadata.get(name);
    if (values.length === 0) return null;
    if (values.length === 1) return text(values[0]!);
    return values.map(text).join(", ");
  }

  has(name: string): boolean {
    return this.metadata.get(name).length > 0;
  }

  set(name: string, value: string): void {
    const key = name.toLowerCase();
    if (!isTransportHeader(key)) this.metadata.set(key, wire(key, value));
  }

  append(name: string, value: string): void {
    const key = name.toLowerCase();
    if (!isTransportHeader(key)) this.metadata.add(key, wire(key, value));
  }

  delete(name: string): void {
    this.metadata.remove(name);
  }

  getSetCookie(): string[] {
    return this.metadata.get("set-cookie").map(text);
  }

  forEach(callback: (value: string, key: string, parent: Headers) => void, thisArg?: unknown): void {
    for (const [key, value] of this.entries()) callback.call(thisArg, value, key, this);
  }

  entries(): IterableIterator<[string, string]> {
    const json = this.metadata.toJSON();
    const pairs: [string, string][] = [];
    for (const key of Object.keys(json).sort()) {
      const values = json[key]!.map(text);
      if (key === "set-cookie") for (const v of values) pairs.push([key, v]);
      else if (values.length > 0) pairs.push([key, values.join(", ")]);
    }
    return pairs[Symbol.iterator]();
  }

  keys(): IterableIterator<string> {
    return Array.from(this.entries(), ([key]) => key)[Symbol.iterator]();
  }

  values(): IterableIterator<string> {
    return Array.from(this.entries(), ([, value]) => value)[Symbol.iterator]();
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }
}

function text(value: string | Buffer): string {
  return typeof value === "string" ? value : encodeBinaryHeader(value);
}

function wire(key: string, value: string): string | Buffer {
  return key.endsWith("-bin") ? Buffer.from(decodeBinaryHeader(value)) : normalize(value);
}
