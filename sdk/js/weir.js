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
// file) and builds it into a component with componentize-js.
//
// What `process` returns decides the message's outcome:
// - `null` / `undefined`: drop the message (filter);
// - an `Output`, the input `Message`, a `Uint8Array` or a string: emit one
//   output (bytes and strings replace the value and keep the input's key,
//   headers and timestamp);
// - an array (or any iterable other than a string/bytes) of those: emit each;
// - a `Fail` (returned or thrown): fail the message; the stage's `on_error`
//   policy applies.
// Any other exception thrown by `process` fails that message only, with the
// error's message as the reason: it never traps the instance.

import * as host from "weir:processor/host@0.1.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * @typedef {{ name: string, value: Uint8Array }} Header
 * @typedef {{ name: string, partition?: number, offset?: bigint, id?: string }} Origin
 * @typedef {Uint8Array | string} Bytes
 * @typedef {Record<string, Bytes> | Array<[string, Bytes]> | Header[]} HeadersInit
 * @typedef {{ key?: Bytes | null, headers?: HeadersInit, timestampMs?: bigint | null, route?: string | null }} OutputOptions
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

/** @param {HeadersInit | undefined} headers @returns {Header[]} */
function normaliseHeaders(headers) {
  if (headers == null) return [];
  const entries = Array.isArray(headers) ? headers : Object.entries(headers);
  return entries.map((h) =>
    Array.isArray(h)
      ? { name: String(h[0]), value: bytes(h[1], "header value") }
      : { name: String(h.name), value: bytes(h.value, "header value") },
  );
}

/** Fails the message: return it or throw it from `process`. */
export class Fail extends Error {
  /** @param {string} reason */
  constructor(reason) {
    super(String(reason));
    this.name = "Fail";
    /** @type {string} */
    this.reason = String(reason);
  }
}

/** A message to emit. */
export class Output {
  /**
   * @param {Bytes} value
   * @param {OutputOptions} [options] `route` names the sinks that receive it
   *   (none: the default next hop).
   */
  constructor(value = new Uint8Array(), { key = null, headers = undefined, timestampMs = null, route = null } = {}) {
    /** @type {Uint8Array | undefined} */
    this.key = key == null ? undefined : bytes(key, "key");
    /** @type {Uint8Array} */
    this.value = bytes(value);
    /** @type {Header[]} */
    this.headers = normaliseHeaders(headers);
    /** @type {bigint | undefined} */
    this.timestampMs = timestampMs == null ? undefined : BigInt(timestampMs);
    /** @type {string | undefined} */
    this.route = route == null ? undefined : String(route);
  }

  /** An output whose value is `value` as compact JSON. @param {unknown} value @param {OutputOptions} [options] */
  static json(value, options) {
    return new Output(JSON.stringify(value), options);
  }

  /** @param {Bytes} value */
  withValue(value) {
    this.value = bytes(value);
    return this;
  }

  /** @param {unknown} value */
  withJson(value) {
    this.value = encoder.encode(JSON.stringify(value));
    return this;
  }

  /** @param {Bytes | null} key */
  withKey(key) {
    this.key = key == null ? undefined : bytes(key, "key");
    return this;
  }

  /** @param {string | null} route */
  withRoute(route) {
    this.route = route == null ? undefined : String(route);
    return this;
  }

  /** Sets header `name`, replacing any header of that name. @param {string} name @param {Bytes} value */
  withHeader(name, value) {
    this.headers = this.headers.filter((h) => h.name !== name);
    this.headers.push({ name, value: bytes(value, "header value") });
    return this;
  }

  /** @param {string} name @returns {Uint8Array | undefined} */
  header(name) {
    return this.headers.find((h) => h.name === name)?.value;
  }
}

/** One input message. */
export class Message {
  constructor(raw) {
    /** @type {Uint8Array | undefined} */
    this.key = raw.key;
    /** @type {Uint8Array} */
    this.value = raw.value;
    /** @type {Header[]} */
    this.headers = raw.headers;
    /** Milliseconds since the Unix epoch. @type {bigint | undefined} */
    this.timestampMs = raw.timestampMs;
    /** Where the message was read from. @type {Origin | undefined} */
    this.origin = raw.origin;
  }

  /** The value as UTF-8 text (throws on invalid UTF-8). */
  get text() {
    return decoder.decode(this.value);
  }

  /** The key as UTF-8 text, or undefined without a key. */
  get keyText() {
    return this.key === undefined ? undefined : decoder.decode(this.key);
  }

  /** The value parsed as JSON (throws a SyntaxError when it is not JSON). */
  json() {
    return JSON.parse(this.text);
  }

  /** The first header called `name`. @param {string} name @returns {Uint8Array | undefined} */
  header(name) {
    return this.headers.find((h) => h.name === name)?.value;
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
  output(value, options = {}) {
    const out = new Output(value === undefined ? this.value : value, { route: options.route });
    out.key = "key" in options ? (options.key == null ? undefined : bytes(options.key, "key")) : this.key;
    out.headers = "headers" in options ? normaliseHeaders(options.headers) : this.headers.slice();
    out.timestampMs =
      "timestampMs" in options ? (options.timestampMs == null ? undefined : BigInt(options.timestampMs)) : this.timestampMs;
    return out;
  }

  /** An output with this message's metadata and `value` as JSON. @param {unknown} value @param {OutputOptions} [options] */
  withJson(value, options) {
    return this.output(JSON.stringify(value), options);
  }

  /** This message, unchanged, bound for `route`. @param {string} route */
  withRoute(route) {
    return this.output(undefined, { route });
  }
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

function one(message, result) {
  if (result instanceof Output) return result;
  if (typeof result === "string" || result instanceof Uint8Array) return message.output(result);
  if (result instanceof Message) return result.output();
  throw new TypeError(
    `process returned ${describe(result)}: return an Output, a Uint8Array, a string, an array of them, null or a Fail`,
  );
}

function outcomeOf(message, result) {
  if (result == null) return { tag: "emit", val: [] };
  if (result instanceof Fail) return { tag: "fail", val: result.reason };
  if (typeof result === "object" && typeof result[Symbol.iterator] === "function" && !(result instanceof Uint8Array)) {
    const outputs = [];
    for (const item of result) {
      if (item instanceof Fail) return { tag: "fail", val: item.reason };
      if (item != null) outputs.push(one(message, item));
    }
    return { tag: "emit", val: outputs };
  }
  return { tag: "emit", val: [one(message, result)] };
}

function safeOutcome(message, result) {
  try {
    return outcomeOf(message, result);
  } catch (error) {
    return { tag: "fail", val: reasonOf(error) };
  }
}

function report(error) {
  try {
    if (error instanceof Error && error.stack) host.log("debug", `${error.name}: ${error.message}\n${error.stack}`);
  } catch {
    // logging must never turn a failure into a trap
  }
}

/**
 * Exports a processor class as the component's `processor` world:
 * `export const { init, process } = processor(MyProcessor);`
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
    process(batch) {
      if (instance === null) return batch.map(() => ({ tag: "fail", val: "plugin used before init" }));
      const messages = batch.map((raw) => new Message(raw));
      if (typeof instance.processBatch === "function") {
        let results;
        try {
          results = Array.from(instance.processBatch(messages));
        } catch (error) {
          report(error);
          const reason = reasonOf(error);
          return messages.map(() => ({ tag: "fail", val: reason }));
        }
        if (results.length !== messages.length) {
          const reason = `processBatch returned ${results.length} outcomes for ${messages.length} messages`;
          return messages.map(() => ({ tag: "fail", val: reason }));
        }
        return messages.map((message, i) => safeOutcome(message, results[i]));
      }
      return messages.map((message) => {
        try {
          return outcomeOf(message, instance.process(message));
        } catch (error) {
          report(error);
          return { tag: "fail", val: reasonOf(error) };
        }
      });
    },
  };
}
