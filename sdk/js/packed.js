// The packed batch ABI, version 1 (docs/packed-abi.md): a reader for the
// batch the host sends and a writer for the reply. No host imports, so it
// runs (and is tested) under plain node as well as inside the component.
//
// Both sides go through typed-array views: every table is read and written
// as u32 words, the data area as bytes. Typed arrays use the platform's byte
// order, which is little-endian in WebAssembly and on every node target.

const BATCH_MAGIC = 0x424b5057; // "WPKB"
const REPLY_MAGIC = 0x524b5057; // "WPKR"
const VERSION = 1;
const TWO_32 = 4294967296;

const KEY = 1;
const TIMESTAMP = 2;
const ORIGIN = 4;
const PARTITION = 8;
const OFFSET = 16;
const ORIGIN_ID = 32;
const ROUTE = 4;

const EMIT = 0;
const KEEP = 1;
const FAIL = 2;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** UTF-8 of header names: a handful of distinct names, encoded once each. */
const names = new Map();
function nameBytes(name) {
  let encoded = names.get(name);
  if (encoded === undefined) {
    encoded = encoder.encode(name);
    // Names built per message (a counter in the name) must not grow it forever.
    if (names.size >= 1024) names.clear();
    names.set(name, encoded);
  }
  return encoded;
}

/** Copies `bytes` into `u8` at `at`; returns their length. */
function copy(u8, bytes, at) {
  u8.set(bytes, at);
  return bytes.length;
}

/** Whether `bytes[off ..]` starts with `wanted`. */
function equal(bytes, off, wanted) {
  for (let k = 0; k < wanted.length; k++) if (bytes[off + k] !== wanted[k]) return false;
  return true;
}

/** A packed batch, read in place: accessors take a message index. */
export class PackedBatch {
  /** @param {Uint8Array} bytes */
  constructor(bytes) {
    if (!(bytes instanceof Uint8Array)) {
      // componentize-js passes a Uint8Array of another realm: view its
      // buffer from this one, so `instanceof Uint8Array` holds for every
      // view handed to the processor.
      if (!ArrayBuffer.isView(bytes)) throw new TypeError("a packed batch must be a Uint8Array");
      bytes = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    if (bytes.byteLength < 32) throw new Error(`packed batch: ${bytes.byteLength} bytes is shorter than its header`);
    const aligned = bytes.byteOffset % 4 === 0;
    // A Uint32Array needs an aligned start: otherwise the header, then the
    // tables (not the data), are copied once.
    let words = aligned
      ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2)
      : new Uint32Array(bytes.slice(0, 32).buffer);
    if (words[0] !== BATCH_MAGIC) throw new Error("packed batch: bad magic");
    if (words[1] !== VERSION) throw new Error(`packed batch: unknown version ${words[1]}`);
    const count = words[2];
    const headerCount = words[3];
    const messagesOff = words[4];
    const headersOff = words[5];
    if (words[6] !== bytes.byteLength) throw new Error(`packed batch: total_len ${words[6]} ≠ ${bytes.byteLength} bytes`);
    if (messagesOff % 4 !== 0 || headersOff % 4 !== 0) throw new Error("packed batch: unaligned table");
    const tablesEnd = Math.max(messagesOff + count * 64, headersOff + headerCount * 16);
    if (tablesEnd > bytes.byteLength) throw new Error("packed batch: a table does not fit in the buffer");
    if (!aligned) words = new Uint32Array(bytes.slice(0, (tablesEnd + 3) & ~3).buffer);
    /** @type {Uint8Array} */
    this.bytes = bytes;
    /** @type {Uint32Array} */
    this.words = words;
    /** Number of messages. */
    this.count = count;
    this.messages = messagesOff >>> 2;
    this.headerTable = headersOff >>> 2;
  }

  /** @param {number} i */
  key(i) {
    const w = this.words;
    const b = this.messages + i * 16;
    return w[b] & KEY ? this.bytes.subarray(w[b + 1], w[b + 1] + w[b + 2]) : undefined;
  }

  /** @param {number} i */
  value(i) {
    const w = this.words;
    const b = this.messages + i * 16;
    return this.bytes.subarray(w[b + 3], w[b + 3] + w[b + 4]);
  }

  /** Milliseconds since the epoch, as a Number (exact below 2^53). @param {number} i */
  timestampMs(i) {
    const w = this.words;
    const b = this.messages + i * 16;
    return w[b] & TIMESTAMP ? w[b + 7] + w[b + 8] * TWO_32 : undefined;
  }

  /** The message's headers, in order, as fresh `{ name, value }` entries. @param {number} i */
  headers(i) {
    const w = this.words;
    const b = this.messages + i * 16;
    const first = this.headerTable + w[b + 5] * 4;
    const headers = new Array(w[b + 6]);
    for (let j = 0; j < headers.length; j++) {
      const h = first + j * 4;
      headers[j] = {
        name: decoder.decode(this.bytes.subarray(w[h], w[h] + w[h + 1])),
        value: this.bytes.subarray(w[h + 2], w[h + 2] + w[h + 3]),
      };
    }
    return headers;
  }

  /** The value of the first header called `name`, without decoding the others. @param {number} i @param {string} name */
  header(i, name) {
    const w = this.words;
    const b = this.messages + i * 16;
    const first = this.headerTable + w[b + 5] * 4;
    const end = first + w[b + 6] * 4;
    if (first === end) return undefined;
    const wanted = nameBytes(name);
    for (let h = first; h < end; h += 4) {
      if (w[h + 1] === wanted.length && equal(this.bytes, w[h], wanted)) {
        return this.bytes.subarray(w[h + 2], w[h + 2] + w[h + 3]);
      }
    }
    return undefined;
  }

  /** Where the message was read from (offset as a Number). @param {number} i */
  origin(i) {
    const w = this.words;
    const b = this.messages + i * 16;
    const flags = w[b];
    if (!(flags & ORIGIN)) return undefined;
    const origin = { name: decoder.decode(this.bytes.subarray(w[b + 9], w[b + 9] + w[b + 10])) };
    if (flags & PARTITION) origin.partition = w[b + 11];
    if (flags & OFFSET) origin.offset = w[b + 12] + w[b + 13] * TWO_32;
    if (flags & ORIGIN_ID) origin.id = decoder.decode(this.bytes.subarray(w[b + 14], w[b + 14] + w[b + 15]));
    return origin;
  }

  /**
   * Message `i` as the record world's `message` (bigint timestamp and
   * offset), for processors written against that world by hand.
   * @param {number} i
   */
  record(i) {
    const timestampMs = this.timestampMs(i);
    const origin = this.origin(i);
    if (origin?.offset !== undefined) origin.offset = this.exact(i, 12);
    return {
      key: this.key(i),
      value: this.value(i),
      headers: this.headers(i),
      timestampMs: timestampMs === undefined ? undefined : this.exact(i, 7),
      origin,
    };
  }

  exact(i, word) {
    const b = this.messages + i * 16 + word;
    return (BigInt(this.words[b + 1]) << 32n) | BigInt(this.words[b]);
  }
}

function describe(value) {
  if (value === null) return "null";
  if (typeof value === "object") return value.constructor?.name ?? "object";
  return typeof value;
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const TWO_64 = 1n << 64n;

/**
 * Builds a reply in one pass. The outcome table sits right after the reply
 * header (its size is known from the batch), bytes go to the data area after
 * it as outputs arrive, and the output, header and route tables are kept
 * aside and appended, 8-aligned, by `finish`: no output is visited twice.
 *
 * An output is `{ key?: Uint8Array | string | null, value: Uint8Array |
 * string, headers?: Array<{ name: string, value: Uint8Array }>, timestampMs?:
 * number | bigint | null, route?: string | null }`, strings written as UTF-8.
 * A malformed one makes `emit` throw a TypeError and record nothing, so it
 * fails only its own message.
 *
 * The SDK's `Output` is read through its internal fields: `_key` (null: no
 * key) and `_value`, and, when `_base` is a PackedBatch (made by
 * `message.output()`), the headers of message `_at` of that batch, less
 * those named `_skip`, copied from table to table, then its `_headers`.
 */
export class ReplyWriter {
  constructor() {
    this.grow(1 << 16, 0);
    this.outputTable = new Uint32Array(12 * 256);
    this.headerTable = new Uint32Array(4 * 256);
    /** Route name → index in the route table. @type {Map<string, number>} */
    this.routes = new Map();
    /** The route table: name offset, length, ... */
    this.routeSpans = [];
    this.routeNames = [];
    this.begin(0);
  }

  /** Starts a reply to a batch of `count` messages. @param {number} count */
  begin(count) {
    this.count = count;
    this.outcomes = 0;
    this.outputs = 0;
    this.headers = 0;
    this.routes.clear();
    this.routeSpans.length = 0;
    this.routeNames.length = 0;
    this.cursor = 48 + count * 16;
    if (this.cursor > this.u8.length) this.grow(this.cursor * 2, 0);
  }

  // Outcomes are written word by word: `fill` is a loop in the interpreter.

  /** Forward the input unchanged. (`outcome` inlined: the identity path.) */
  keep() {
    if (this.outcomes === this.count) throw new Error(`more outcomes than the ${this.count} messages of the batch`);
    const c = 12 + this.outcomes++ * 4;
    const w = this.u32;
    w[c] = KEEP;
    w[c + 1] = 0;
    w[c + 2] = 0;
    w[c + 3] = 0;
  }

  /** Emit nothing: the message is filtered out. */
  drop() {
    this.outcome(EMIT, this.outputs, 0);
  }

  /** @param {string} reason */
  fail(reason) {
    reason = String(reason);
    this.reserve(reason.length * 3);
    const { written } = encoder.encodeInto(reason, this.u8.subarray(this.cursor));
    this.outcome(FAIL, this.cursor, written);
    this.cursor += written;
  }

  /** Emit one output. */
  emit(output) {
    const first = this.outputs;
    const headers = this.headers;
    const cursor = this.cursor;
    const routes = this.routeNames.length;
    try {
      this.put(output);
    } catch (error) {
      this.undo(first, headers, cursor, routes);
      throw error;
    }
    this.outcome(EMIT, first, 1);
  }

  /** Emit several outputs (none: drop). @param {unknown[]} outputs */
  emitMany(outputs) {
    if (!Array.isArray(outputs)) throw new TypeError(`emit takes an array of outputs, not ${describe(outputs)}`);
    const first = this.outputs;
    const headers = this.headers;
    const cursor = this.cursor;
    const routes = this.routeNames.length;
    try {
      for (let k = 0; k < outputs.length; k++) this.put(outputs[k]);
    } catch (error) {
      this.undo(first, headers, cursor, routes);
      throw error;
    }
    this.outcome(EMIT, first, outputs.length);
  }

  outcome(kind, a, b) {
    if (this.outcomes === this.count) throw new Error(`more outcomes than the ${this.count} messages of the batch`);
    const w = this.u32;
    const c = 12 + this.outcomes++ * 4;
    w[c] = kind;
    w[c + 1] = a;
    w[c + 2] = b;
    w[c + 3] = 0;
  }

  /** Forgets what a failed emit wrote. */
  undo(outputs, headers, cursor, routes) {
    this.outputs = outputs;
    this.headers = headers;
    this.cursor = cursor;
    while (this.routeNames.length > routes) this.routes.delete(this.routeNames.pop());
    this.routeSpans.length = routes * 2;
  }

  /** Makes room for `bytes` more bytes of data. */
  reserve(bytes) {
    const needed = this.cursor + bytes;
    if (needed > this.u8.length) this.grow(Math.max(needed, this.u8.length * 2), this.cursor);
  }

  grow(size, keep) {
    const old = this.u8;
    this.u8 = new Uint8Array((size + 7) & ~7);
    this.u32 = new Uint32Array(this.u8.buffer);
    if (keep > 0) this.u8.set(old.subarray(0, keep));
  }

  /** Appends one output's entry, headers and bytes. */
  put(out) {
    if (out === null || typeof out !== "object") throw new TypeError(`an output must be an object, not ${describe(out)}`);
    let key = out._key;
    if (key === undefined) key = out.key;
    let value = out._value;
    if (value === undefined) value = out.value;
    const base = out._base instanceof PackedBatch ? out._base : null;
    const headers = base === null ? out.headers : out._headers;
    const ts = out.timestampMs;
    const route = out.route;
    let size;
    if (value instanceof Uint8Array) size = value.length;
    else if (typeof value === "string") size = value.length * 3;
    else throw new TypeError(`output value must be a Uint8Array or a string, not ${describe(value)}`);
    let flags = 0;
    if (key != null) {
      if (key instanceof Uint8Array) size += key.length;
      else if (typeof key === "string") size += key.length * 3;
      else throw new TypeError(`output key must be a Uint8Array or a string, not ${describe(key)}`);
      flags = KEY;
    }
    let inherited = 0;
    let skip = null;
    let first = 0;
    if (base !== null) {
      const m = base.messages + out._at * 16;
      first = base.headerTable + base.words[m + 5] * 4;
      inherited = base.words[m + 6];
      for (let h = first; h < first + inherited * 4; h += 4) size += base.words[h + 1] + base.words[h + 3];
      if (out._skip !== null) skip = nameBytes(out._skip);
    }
    const hc = headers == null ? 0 : headers.length;
    if (hc !== 0) {
      if (!Array.isArray(headers)) throw new TypeError(`output headers must be an array, not ${describe(headers)}`);
      for (let j = 0; j < hc; j++) {
        const h = headers[j];
        if (typeof h?.name !== "string" || !(h.value instanceof Uint8Array)) {
          throw new TypeError("an output header must be { name: string, value: Uint8Array }");
        }
        size += h.name.length * 3 + h.value.length;
      }
    }
    let tsLo = 0;
    let tsHi = 0;
    if (ts != null) {
      if (typeof ts === "number" && ts >= 0 && ts <= MAX_SAFE && ts % 1 === 0) {
        tsLo = ts % TWO_32;
        tsHi = (ts - tsLo) / TWO_32;
      } else if (typeof ts === "bigint" && ts >= 0n && ts < TWO_64) {
        tsLo = Number(ts & 0xffffffffn);
        tsHi = Number(ts >> 32n);
      } else {
        throw new TypeError(`timestampMs must be a non-negative integer (number or bigint), not ${String(ts)}`);
      }
      flags |= TIMESTAMP;
    }
    let routeIndex = 0;
    if (route != null) {
      if (typeof route !== "string") throw new TypeError(`output route must be a string, not ${describe(route)}`);
      routeIndex = this.routes.get(route) ?? this.addRoute(route);
      flags |= ROUTE;
    }

    this.reserve(size);
    const u8 = this.u8;
    let cursor = this.cursor;
    let ot = this.outputTable;
    let o = this.outputs * 12;
    if (o + 12 > ot.length) {
      ot = new Uint32Array(ot.length * 2);
      ot.set(this.outputTable);
      this.outputTable = ot;
    }
    ot[o] = flags;
    if (key != null) {
      const written = key instanceof Uint8Array ? copy(u8, key, cursor) : encoder.encodeInto(key, u8.subarray(cursor)).written;
      ot[o + 1] = cursor;
      ot[o + 2] = written;
      cursor += written;
    } else {
      ot[o + 1] = 0;
      ot[o + 2] = 0;
    }
    const written = value instanceof Uint8Array ? copy(u8, value, cursor) : encoder.encodeInto(value, u8.subarray(cursor)).written;
    ot[o + 3] = cursor;
    ot[o + 4] = written;
    cursor += written;
    ot[o + 5] = this.headers;
    ot[o + 7] = tsLo;
    ot[o + 8] = tsHi;
    ot[o + 9] = routeIndex;
    ot[o + 10] = 0;
    ot[o + 11] = 0;
    let ht = this.headerTable;
    let h = this.headers * 4;
    if (h + (inherited + hc) * 4 > ht.length) {
      ht = new Uint32Array(Math.max(ht.length * 2, h + (inherited + hc) * 4));
      ht.set(this.headerTable);
      this.headerTable = ht;
    }
    if (inherited !== 0) {
      const bw = base.words;
      const bytes = base.bytes;
      for (let b = first; b < first + inherited * 4; b += 4) {
        const nameOff = bw[b];
        const nameLen = bw[b + 1];
        if (skip !== null && nameLen === skip.length && equal(bytes, nameOff, skip)) continue;
        const valueOff = bw[b + 2];
        const valueLen = bw[b + 3];
        u8.set(bytes.subarray(nameOff, nameOff + nameLen), cursor);
        ht[h] = cursor;
        ht[h + 1] = nameLen;
        cursor += nameLen;
        u8.set(bytes.subarray(valueOff, valueOff + valueLen), cursor);
        ht[h + 2] = cursor;
        ht[h + 3] = valueLen;
        cursor += valueLen;
        h += 4;
      }
    }
    if (hc !== 0) {
      for (let j = 0; j < hc; j++) {
        const header = headers[j];
        const name = nameBytes(header.name);
        u8.set(name, cursor);
        ht[h] = cursor;
        ht[h + 1] = name.length;
        cursor += name.length;
        const hv = header.value;
        u8.set(hv, cursor);
        ht[h + 2] = cursor;
        ht[h + 3] = hv.length;
        cursor += hv.length;
        h += 4;
      }
    }
    ot[o + 6] = h / 4 - this.headers;
    this.headers = h / 4;
    this.cursor = cursor;
    this.outputs++;
  }

  addRoute(route) {
    const index = this.routeNames.length;
    this.reserve(route.length * 3);
    const { written } = encoder.encodeInto(route, this.u8.subarray(this.cursor));
    this.routeSpans.push(this.cursor, written);
    this.cursor += written;
    this.routeNames.push(route);
    this.routes.set(route, index);
    return index;
  }

  /** Writes the tables and the header. The view is valid until the next `begin`. @returns {Uint8Array} */
  finish() {
    if (this.outcomes !== this.count) throw new Error(`${this.outcomes} outcomes for the ${this.count} messages of the batch`);
    const outputsOff = (this.cursor + 7) & ~7;
    const headersOff = outputsOff + this.outputs * 48;
    const routesOff = headersOff + this.headers * 16;
    const total = routesOff + this.routeNames.length * 8;
    if (total > this.u8.length) this.grow(total, this.cursor);
    const w = this.u32;
    for (let pad = this.cursor; pad < outputsOff; pad++) this.u8[pad] = 0;
    w.set(this.outputTable.subarray(0, this.outputs * 12), outputsOff >>> 2);
    w.set(this.headerTable.subarray(0, this.headers * 4), headersOff >>> 2);
    const spans = this.routeSpans;
    for (let r = 0; r < spans.length; r++) w[(routesOff >>> 2) + r] = spans[r];
    w[0] = REPLY_MAGIC;
    w[1] = VERSION;
    w[2] = this.count;
    w[3] = this.outputs;
    w[4] = this.headers;
    w[5] = this.routeNames.length;
    w[6] = 48;
    w[7] = outputsOff;
    w[8] = headersOff;
    w[9] = routesOff;
    w[10] = total;
    w[11] = 0;
    return new Uint8Array(this.u8.buffer, 0, total);
  }
}

/**
 * Adapts a `process` written by hand against the record world (a list of
 * WIT `message` records in, a list of `{ tag: "emit" | "fail", val }` out)
 * to `process-packed`. Malformed outcomes throw, as the record world's
 * bindings trap on them.
 * @param {(batch: object[]) => Array<{ tag: string, val: unknown }>} process
 */
export function adaptRecordProcess(process) {
  const writer = new ReplyWriter();
  return function processPacked(bytes) {
    const batch = new PackedBatch(bytes);
    const records = new Array(batch.count);
    for (let i = 0; i < records.length; i++) records[i] = batch.record(i);
    const outcomes = Array.from(process(records));
    // The reply says how many outcomes there were: the host refuses a
    // count that does not match, as it does in the record world.
    writer.begin(outcomes.length);
    for (const outcome of outcomes) {
      if (outcome?.tag === "emit") writer.emitMany(outcome.val);
      else if (outcome?.tag === "fail") writer.fail(outcome.val);
      else throw new TypeError(`process returned an outcome that is not { tag: "emit" | "fail", val }: ${describe(outcome)}`);
    }
    return writer.finish();
  };
}

/**
 * The `processPacked` export of a plugin module (the entry `weir build`
 * generates): the module's own `processPacked`; else the packed
 * implementation the SDK's `processor()` attaches to `process`; else an
 * adapter around a hand-written record-world `process`.
 * @param {{ process?: Function & { packed?: Function }, processPacked?: Function }} plugin
 */
export function packedExport(plugin) {
  if (typeof plugin.processPacked === "function") return plugin.processPacked;
  if (typeof plugin.process?.packed === "function") return plugin.process.packed;
  if (typeof plugin.process === "function") return adaptRecordProcess(plugin.process);
  throw new Error("the plugin module exports neither `process` nor `processPacked`");
}
