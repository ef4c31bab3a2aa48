// The weir JavaScript SDK: write a weir stream processor as a class.
//
//     import { Fail, processor } from "weir-sdk";
//
//     class Upper {
//       init(config) { this.suffix = config.get("suffix") ?? "!"; }
//       process(message) { return message.text.toUpperCase() + this.suffix; }
//     }
//
//     export const { init, process } = processor(Upper);
//
// `weir build FOLDER` bundles the module (with `weir-sdk` resolved to this
// file) behind a generated entry that exports the `processor-packed` world:
// the packed implementation `processor()` attaches to `process` (see
// packed.js). Built for the record world, the same module exports `process`.
//
// What `process` returns decides the message's outcome:
// - `null` / `undefined`: drop the message (filter);
// - the input `Message` itself, unchanged: forward it as it is (the
//   cheapest outcome: nothing is copied back to the host);
// - an `Output`, a `Message`, a `Uint8Array` or a string: emit one output
//   (bytes and strings replace the value and keep the input's key, headers
//   and timestamp);
// - an array (or any iterable other than a string/bytes) of those: emit each;
// - a `Fail` (returned or thrown): fail the message; the stage's `on_error`
//   policy applies.
// Any other exception thrown by `process` fails that message only, with the
// error's message as the reason: it never traps the instance.

import * as host from "weir:processor/host@0.1.0";
import { PackedBatch, ReplyWriter } from "./packed.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });
const EMPTY = new Uint8Array(0);

/**
 * @typedef {{ name: string, value: Uint8Array }} Header
 * @typedef {{ name: string, partition?: number, offset?: number, id?: string }} Origin
 * @typedef {Uint8Array | string} Bytes
 * @typedef {Record<string, Bytes> | Array<[string, Bytes]> | Header[]} HeadersInit
 * @typedef {{ key?: Bytes | null, headers?: HeadersInit, timestampMs?: number | bigint | null, route?: string | null }} OutputOptions
 * @typedef {Output | Message | Bytes | null | undefined | Fail} Result
 */

/** Encodes a string as UTF-8; passes bytes through. @param {Bytes} value @returns {Uint8Array} */
export function bytes(value, what = "value") {
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") return encoder.encode(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  throw new TypeError(`${what} must be a Uint8Array or a string, not ${describe(value)}`);
}

/** Decodes UTF-8 bytes (throws on invalid UTF-8). @param {Uint8Array} value @returns {string} */
export function text(value) {
  return decoder.decode(value);
}

function describe(value) {
  if (value === null) return "null";
  if (typeof value === "object") return value.constructor?.name ?? "object";
  return typeof value;
}

// Header values given as strings are mostly constants (a region, a flag):
// encode each once. The bytes are shared between outputs: read-only.
const headerValues = new Map();
function headerBytes(value) {
  if (typeof value !== "string") return bytes(value, "header value");
  let encoded = headerValues.get(value);
  if (encoded === undefined) {
    encoded = encoder.encode(value);
    if (headerValues.size >= 256) headerValues.clear();
    headerValues.set(value, encoded);
  }
  return encoded;
}

/** @param {HeadersInit | undefined} headers @returns {Header[]} */
function normaliseHeaders(headers) {
  if (headers == null) return [];
  const entries = Array.isArray(headers) ? headers : Object.entries(headers);
  return entries.map((h) =>
    Array.isArray(h)
      ? { name: String(h[0]), value: headerBytes(h[1]) }
      : { name: String(h.name), value: headerBytes(h.value) },
  );
}

/**
 * A timestamp in ms as a Number (bigints too large for one stay bigints).
 * @param {number | bigint | null | undefined} value @returns {number | bigint | undefined}
 */
function timestamp(value) {
  if (value == null) return undefined;
  if (typeof value === "bigint") {
    if (value < 0n || value >= 1n << 64n) throw new RangeError(`timestampMs ${value} is not a u64`);
    return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }
  if (Number.isSafeInteger(value) && value >= 0) return value;
  throw new TypeError(`timestampMs must be a non-negative integer, not ${String(value)}`);
}

/**
 * Fails the message: return it or throw it from `process`. It is an Error
 * (`instanceof Error`, `.message`) built without capturing a stack, which
 * would cost more than most processors' work for the message.
 */
export class Fail {
  /** @param {string} reason */
  constructor(reason) {
    /** @type {string} */
    this.reason = String(reason);
    this.message = this.reason;
  }
}
Object.setPrototypeOf(Fail.prototype, Error.prototype);
Fail.prototype.name = "Fail";

/** A message to emit. */
export class Output {
  /**
   * @param {Bytes} value
   * @param {OutputOptions} [options] `route` names the sinks that receive it
   *   (none: the default next hop).
   */
  constructor(value = EMPTY, options = undefined) {
    // Key (null: none) and value are kept as strings when given as strings:
    // the reply writer encodes them in place, and `key`/`value` below encode
    // them only if read. An encoded copy per output is garbage the engine
    // frees late, and it pushed busy instances past their memory cap.
    this._key = null;
    this._value = typeof value === "string" || value instanceof Uint8Array ? value : bytes(value);
    this._headers = [];
    // Headers inherited from an input message, read from its batch only when
    // needed (`headers` below); the reply writer copies them from the batch.
    this._base = null;
    this._at = 0;
    // A header name left out of the inherited ones (set by `withHeader`).
    this._skip = null;
    /** Milliseconds since the Unix epoch. @type {number | bigint | undefined} */
    this.timestampMs = undefined;
    /** @type {string | undefined} */
    this.route = undefined;
    if (options != null) {
      if (options.key != null) this.key = options.key;
      if (options.headers != null) this._headers = normaliseHeaders(options.headers);
      this.timestampMs = timestamp(options.timestampMs);
      if (options.route != null) this.route = String(options.route);
    }
  }

  /** An output whose value is `value` as compact JSON. @param {unknown} value @param {OutputOptions} [options] */
  static json(value, options) {
    return new Output(JSON.stringify(value), options);
  }

  /** @param {Bytes} value */
  withValue(value) {
    this.value = value;
    return this;
  }

  /** @param {unknown} value */
  withJson(value) {
    this._value = JSON.stringify(value);
    return this;
  }

  /** @param {Bytes | null} key */
  withKey(key) {
    this.key = key;
    return this;
  }

  /** @type {Uint8Array | undefined} */
  get key() {
    if (typeof this._key === "string") this._key = encoder.encode(this._key);
    return this._key ?? undefined;
  }
  set key(key) {
    this._key = key == null ? null : typeof key === "string" ? key : bytes(key, "key");
  }

  /** @type {Uint8Array} */
  get value() {
    if (typeof this._value === "string") this._value = encoder.encode(this._value);
    return this._value;
  }
  set value(value) {
    this._value = typeof value === "string" ? value : bytes(value);
  }

  /** @param {string | null} route */
  withRoute(route) {
    this.route = route == null ? undefined : String(route);
    return this;
  }

  /** @param {number | bigint | null} timestampMs milliseconds since the Unix epoch */
  withTimestamp(timestampMs) {
    this.timestampMs = timestamp(timestampMs);
    return this;
  }

  /** @type {Header[]} */
  get headers() {
    if (this._base !== null) {
      const inherited = this._base.headers(this._at);
      const headers = [];
      for (let j = 0; j < inherited.length; j++) if (inherited[j].name !== this._skip) headers.push(inherited[j]);
      for (let j = 0; j < this._headers.length; j++) headers.push(this._headers[j]);
      this._headers = headers;
      this._base = null;
      this._skip = null;
    }
    return this._headers;
  }
  set headers(headers) {
    this._headers = headers;
    this._base = null;
    this._skip = null;
  }

  /** Sets header `name`, replacing any header of that name. @param {string} name @param {Bytes} value */
  withHeader(name, value) {
    const entry = { name, value: headerBytes(value) };
    if (this._base !== null && (this._skip === null || this._skip === name)) {
      // Still inheriting: the only headers of its own are earlier `name`s.
      this._skip = name;
      this._headers = [entry];
      return this;
    }
    const headers = this.headers;
    const kept = [];
    for (let j = 0; j < headers.length; j++) if (headers[j].name !== name) kept.push(headers[j]);
    kept.push(entry);
    this._headers = kept;
    return this;
  }

  /** @param {string} name @returns {Uint8Array | undefined} */
  header(name) {
    return this.headers.find((h) => h.name === name)?.value;
  }
}

/**
 * The record world's messages (WIT records), read through the same
 * accessors as a {@link PackedBatch}.
 */
class RecordBatch {
  constructor(records) {
    this.records = records;
    this.count = records.length;
  }
  key(i) {
    return this.records[i].key ?? undefined;
  }
  value(i) {
    return this.records[i].value;
  }
  timestampMs(i) {
    const ts = this.records[i].timestampMs;
    return ts == null ? undefined : Number(ts);
  }
  headers(i) {
    return (this.records[i].headers ?? []).map((h) => ({ name: h.name, value: h.value }));
  }
  header(i, name) {
    return this.records[i].headers?.find((h) => h.name === name)?.value;
  }
  origin(i) {
    const raw = this.records[i].origin;
    if (raw == null) return undefined;
    const origin = { name: raw.name };
    if (raw.partition != null) origin.partition = raw.partition;
    if (raw.offset != null) origin.offset = Number(raw.offset);
    if (raw.id != null) origin.id = raw.id;
    return origin;
  }
}

const UNREAD = Symbol("unread");

/**
 * One input message. Its fields are read from the batch when first used;
 * `key`, `value` and header values are views into the batch: treat them as
 * read-only (assign new bytes instead, or `slice()` to get a copy).
 */
export class Message {
  /**
   * Processors receive messages; `new Message({ key, value, headers,
   * timestampMs, origin })` makes one by hand, e.g. in a unit test.
   */
  constructor(batch, index) {
    if (index === undefined) {
      batch = new RecordBatch([batch]);
      index = 0;
    }
    this._batch = batch;
    this._index = index;
    this._key = UNREAD;
    this._value = null;
    this._headers = null;
    // The headers as first read, [name, value, name, value, ...]: returning
    // the message after changing them must not forward the original.
    this._read = null;
    this._timestampMs = UNREAD;
    this._origin = UNREAD;
    this._changed = false;
  }

  /** @type {Uint8Array | undefined} */
  get key() {
    if (this._key === UNREAD) this._key = this._batch.key(this._index);
    return this._key;
  }
  set key(key) {
    this._key = key == null ? undefined : bytes(key, "key");
    this._changed = true;
  }

  /** @type {Uint8Array} */
  get value() {
    return this._value ?? (this._value = this._batch.value(this._index));
  }
  set value(value) {
    this._value = bytes(value);
    this._changed = true;
  }

  /** @type {Header[]} */
  get headers() {
    if (this._headers === null) {
      const headers = this._batch.headers(this._index);
      const read = new Array(headers.length * 2);
      for (let j = 0; j < headers.length; j++) {
        read[2 * j] = headers[j].name;
        read[2 * j + 1] = headers[j].value;
      }
      this._read = read;
      this._headers = headers;
    }
    return this._headers;
  }
  set headers(headers) {
    this._headers = normaliseHeaders(headers);
    this._changed = true;
  }

  /** Milliseconds since the Unix epoch (a Number). @type {number | bigint | undefined} */
  get timestampMs() {
    return this._timestampMs === UNREAD ? this._batch.timestampMs(this._index) : this._timestampMs;
  }
  set timestampMs(timestampMs) {
    this._timestampMs = timestamp(timestampMs);
    this._changed = true;
  }

  /** Where the message was read from. @type {Origin | undefined} */
  get origin() {
    if (this._origin === UNREAD) this._origin = this._batch.origin(this._index);
    return this._origin;
  }

  /** The value as UTF-8 text (throws on invalid UTF-8). */
  get text() {
    return decoder.decode(this.value);
  }

  /** The key as UTF-8 text, or undefined without a key. */
  get keyText() {
    const key = this.key;
    return key === undefined ? undefined : decoder.decode(key);
  }

  /** The value parsed as JSON (throws a SyntaxError when it is not JSON). */
  json() {
    return JSON.parse(this.text);
  }

  /** The first header called `name`. @param {string} name @returns {Uint8Array | undefined} */
  header(name) {
    if (this._headers === null) return this._batch.header(this._index, name);
    return this._headers.find((h) => h.name === name)?.value;
  }

  /** The first header called `name`, as text. @param {string} name @returns {string | undefined} */
  headerText(name) {
    const value = this.header(name);
    return value === undefined ? undefined : decoder.decode(value);
  }

  /**
   * An output that keeps this message's key, headers and timestamp, with any
   * of them (and the value) replaced.
   * @param {Bytes} [value]
   * @param {OutputOptions} [options]
   */
  output(value, options) {
    // The fields are read directly: this runs for most messages, and each
    // getter call costs as much as the rest of the line in the interpreter.
    const out = new Output(value === undefined ? this.value : value);
    const batch = this._batch;
    const i = this._index;
    const key = this._key === UNREAD ? batch.key(i) : this._key;
    const timestampMs = this._timestampMs === UNREAD ? batch.timestampMs(i) : this._timestampMs;
    if (this._headers === null) {
      out._base = batch;
      out._at = i;
    } else {
      out._headers = this._headers.slice();
    }
    if (options == null) {
      out._key = key === undefined ? null : key;
      out.timestampMs = timestampMs;
      return out;
    }
    out.key = "key" in options ? options.key : key;
    if ("headers" in options) out.headers = normaliseHeaders(options.headers);
    out.timestampMs = "timestampMs" in options ? timestamp(options.timestampMs) : timestampMs;
    if (options.route != null) out.route = String(options.route);
    return out;
  }

  /** An output with this message's metadata and `value` as JSON. @param {unknown} value @param {OutputOptions} [options] */
  withJson(value, options) {
    return this.output(JSON.stringify(value), options);
  }

  /** An output of this message with header `name` set (replacing any of that name). @param {string} name @param {Bytes} value */
  withHeader(name, value) {
    return this.output().withHeader(name, value);
  }

  /** This message, unchanged, bound for `route`. @param {string} route */
  withRoute(route) {
    return this.output(undefined, { route });
  }
}

/** True when `message` is still as it arrived, so it can be forwarded as it is. */
function unchanged(message) {
  if (message._changed) return false;
  const headers = message._headers;
  if (headers === null) return true;
  const read = message._read;
  if (headers.length * 2 !== read.length) return false;
  for (let j = 0; j < headers.length; j++) {
    const h = headers[j];
    if (h?.name !== read[2 * j] || h.value !== read[2 * j + 1]) return false;
  }
  return true;
}

/** The stage's `config` table: a Map of string to string, plus helpers. */
export class Config extends Map {
  /** The value of `name`; throws (refusing the plugin) when it is not set. @param {string} name */
  require(name) {
    if (!this.has(name)) throw new Error(`missing config key \`${name}\``);
    return this.get(name);
  }

  /** @param {string} name @param {number} fallback */
  getInt(name, fallback) {
    const raw = this.get(name);
    if (raw === undefined) return fallback;
    if (!/^-?\d+$/.test(raw.trim())) throw new Error(`config key \`${name}\` = ${JSON.stringify(raw)}: not an integer`);
    return Number.parseInt(raw, 10);
  }

  /** @param {string} name @param {boolean} fallback */
  getBool(name, fallback) {
    const raw = this.get(name);
    if (raw === undefined) return fallback;
    if (raw === "true" || raw === "false") return raw === "true";
    throw new Error(`config key \`${name}\` = ${JSON.stringify(raw)}: expected true or false`);
  }
}

/** Logging to the host's log, tagged with the stage name. */
export const log = {
  /** @param {unknown} text */ trace: (text) => host.log("trace", String(text)),
  /** @param {unknown} text */ debug: (text) => host.log("debug", String(text)),
  /** @param {unknown} text */ info: (text) => host.log("info", String(text)),
  /** @param {unknown} text */ warn: (text) => host.log("warn", String(text)),
  /** @param {unknown} text */ error: (text) => host.log("error", String(text)),
};

/**
 * The stage's key-value state, shared by its instances and kept across hot
 * swaps and restarts. Keys and values are bytes (strings are UTF-8 encoded).
 */
export const state = {
  /** @param {Bytes} key @returns {Uint8Array | undefined} */
  get: (key) => host.stateGet(bytes(key, "key")) ?? undefined,
  /** @param {Bytes} key @returns {string | undefined} */
  getText: (key) => {
    const value = host.stateGet(bytes(key, "key"));
    return value == null ? undefined : decoder.decode(value);
  },
  /** @param {Bytes} key @param {Bytes} value */
  set: (key, value) => host.stateSet(bytes(key, "key"), bytes(value)),
  /** @param {Bytes} key */
  delete: (key) => host.stateDelete(bytes(key, "key")),
  /**
   * Reads `key` as a little-endian u64 (0n when absent or malformed), the
   * encoding of the Rust SDK's `state::get_u64`.
   * @param {Bytes} key @returns {bigint}
   */
  getInt: (key) => {
    const value = host.stateGet(bytes(key, "key"));
    if (value == null || value.length !== 8) return 0n;
    return new DataView(value.buffer, value.byteOffset, 8).getBigUint64(0, true);
  },
  /** @param {Bytes} key @param {bigint | number} value */
  setInt: (key, value) => {
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, BigInt(value), true);
    host.stateSet(bytes(key, "key"), buf);
  },
};

/** Plugin-defined counters, exported by the host as metrics. */
export const counter = {
  /** @param {string} name @param {number | bigint} [delta] */
  add: (name, delta = 1n) => host.counterAdd(String(name), BigInt(delta)),
};

function reasonOf(error) {
  if (error instanceof Fail) return error.reason;
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}

function one(message, item) {
  if (item instanceof Output) return item;
  if (typeof item === "string" || item instanceof Uint8Array) return message.output(item);
  if (item instanceof Message) return item.output();
  throw new TypeError(
    `process returned ${describe(item)}: return an Output, a Uint8Array, a string, an array of them, null or a Fail`,
  );
}

/** Records the outcome of `result`, what `process` returned for `message`. */
function settle(sink, message, result) {
  // Most likely first: each test is a step of the interpreter.
  if (result instanceof Output) {
    sink.emit(result);
  } else if (result === message) {
    if (unchanged(message)) sink.keep(message);
    else sink.emit(message.output());
  } else if (result == null) {
    sink.drop();
  } else if (result instanceof Fail) {
    sink.fail(result.reason);
  } else if (Array.isArray(result)) {
    const outputs = [];
    for (let k = 0; k < result.length; k++) {
      const item = result[k];
      if (item instanceof Fail) return sink.fail(item.reason);
      if (item != null) outputs.push(one(message, item));
    }
    sink.emitMany(outputs);
  } else if (typeof result === "object" && typeof result[Symbol.iterator] === "function" && !(result instanceof Uint8Array)) {
    settle(sink, message, Array.from(result));
  } else {
    sink.emit(one(message, result));
  }
}

/** The record world's outcomes, collected for `process`. */
class RecordOutcomes {
  constructor() {
    this.outcomes = [];
  }
  keep(message) {
    this.emit(message.output());
  }
  drop() {
    this.outcomes.push({ tag: "emit", val: [] });
  }
  fail(reason) {
    this.outcomes.push({ tag: "fail", val: String(reason) });
  }
  emit(output) {
    this.outcomes.push({ tag: "emit", val: [recordOutput(output)] });
  }
  emitMany(outputs) {
    this.outcomes.push({ tag: "emit", val: outputs.map(recordOutput) });
  }
}

function recordOutput(out) {
  return {
    key: out.key ?? undefined,
    value: out.value,
    headers: out.headers,
    timestampMs: out.timestampMs == null ? undefined : BigInt(out.timestampMs),
    route: out.route ?? undefined,
  };
}

function report(error) {
  try {
    if (error instanceof Error && error.stack) host.log("debug", `${error.name}: ${error.message}\n${error.stack}`);
  } catch {
    // logging must never turn a failure into a trap
  }
}

/**
 * Exports a processor class as the component's processor world:
 * `export const { init, process } = processor(MyProcessor);`
 *
 * `process` implements the record world's export; the packed world's
 * `processPacked` is attached to it as `process.packed`, where the entry
 * `weir build` generates finds it.
 *
 * The class is constructed with no arguments; its optional `init(config)`
 * receives the stage's {@link Config} (throw to refuse it); `process(message)`
 * handles one {@link Message}; an optional `processBatch(messages)` handles a
 * whole batch and returns one result per message.
 *
 * @param {new () => { init?: (config: Config) => void, process: (message: Message) => Result | Iterable<Result>, processBatch?: (batch: Message[]) => Array<Result | Iterable<Result>> }} ProcessorClass
 */
export function processor(ProcessorClass) {
  let instance = null;
  const reply = new ReplyWriter();

  /** Runs one batch, recording one outcome per message in `sink`. */
  function run(batch, sink) {
    const count = batch.count;
    if (instance === null) {
      for (let i = 0; i < count; i++) sink.fail("plugin used before init");
      return;
    }
    if (typeof instance.processBatch === "function") {
      const messages = new Array(count);
      for (let i = 0; i < count; i++) messages[i] = new Message(batch, i);
      let results;
      try {
        results = Array.from(instance.processBatch(messages));
      } catch (error) {
        report(error);
        const reason = reasonOf(error);
        for (let i = 0; i < count; i++) sink.fail(reason);
        return;
      }
      if (results.length !== count) {
        const reason = `processBatch returned ${results.length} outcomes for ${count} messages`;
        for (let i = 0; i < count; i++) sink.fail(reason);
        return;
      }
      for (let i = 0; i < count; i++) {
        try {
          settle(sink, messages[i], results[i]);
        } catch (error) {
          sink.fail(reasonOf(error));
        }
      }
      return;
    }
    for (let i = 0; i < count; i++) {
      const message = new Message(batch, i);
      try {
        const result = instance.process(message);
        // The identity fast path, without a call to settle.
        if (result === message && message._changed === false && message._headers === null) sink.keep(message);
        else settle(sink, message, result);
      } catch (error) {
        report(error);
        sink.fail(reasonOf(error));
      }
    }
  }

  /** @param {object[]} batch the record world's messages */
  function process(batch) {
    const outcomes = new RecordOutcomes();
    run(new RecordBatch(batch), outcomes);
    return outcomes.outcomes;
  }

  /** @param {Uint8Array} batch a packed batch @returns {Uint8Array} the packed reply */
  process.packed = function processPacked(batch) {
    const packed = new PackedBatch(batch);
    reply.begin(packed.count);
    run(packed, reply);
    return reply.finish();
  };

  return {
    /** @param {Array<[string, string]>} config */
    init(config) {
      try {
        const created = new ProcessorClass();
        if (typeof created.process !== "function" && typeof created.processBatch !== "function") {
          throw new Error(`${ProcessorClass.name} has no process(message) method`);
        }
        if (typeof created.init === "function") created.init(new Config(config));
        instance = created;
      } catch (error) {
        // A thrown string becomes init's `err` payload.
        throw reasonOf(error);
      }
    },
    process,
  };
}
