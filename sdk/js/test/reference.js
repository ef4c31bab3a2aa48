// A reference codec for the packed ABI, written from docs/packed-abi.md
// alone (DataView, explicit little-endian, bigint timestamps), to check the
// SDK's codec against the document rather than against itself.

const BATCH_MAGIC = 0x424b5057;
const REPLY_MAGIC = 0x524b5057;
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

const toBytes = (v) => (typeof v === "string" ? utf8.encode(v) : v);

/**
 * Encodes a batch. A message is `{ key?, value, headers?: [name, value][],
 * timestampMs?: bigint, origin?: { name, partition?, offset?: bigint, id? } }`
 * with strings or Uint8Arrays for bytes; `key: undefined` means no key.
 * `shift` places the batch at that byteOffset of a larger buffer.
 */
export function encodeBatch(messages, { shift = 0 } = {}) {
  const headerCount = messages.reduce((n, m) => n + (m.headers?.length ?? 0), 0);
  const messagesOff = 32;
  const headersOff = messagesOff + messages.length * 64;
  let dataOff = headersOff + headerCount * 16;
  const data = [];
  const span = (bytes) => {
    bytes = toBytes(bytes);
    const off = dataOff;
    data.push(bytes);
    dataOff += bytes.length;
    return [off, bytes.length];
  };
  const table = [];
  const headerTable = [];
  for (const m of messages) {
    const w = new Array(16).fill(0);
    let flags = 0;
    if (m.key !== undefined) {
      flags |= 1;
      [w[1], w[2]] = span(m.key);
    }
    [w[3], w[4]] = span(m.value);
    w[5] = headerTable.length;
    w[6] = m.headers?.length ?? 0;
    for (const [name, value] of m.headers ?? []) headerTable.push([...span(name), ...span(value)]);
    if (m.timestampMs !== undefined) {
      flags |= 2;
      w[7] = Number(BigInt(m.timestampMs) & 0xffffffffn);
      w[8] = Number(BigInt(m.timestampMs) >> 32n);
    }
    if (m.origin) {
      flags |= 4;
      [w[9], w[10]] = span(m.origin.name);
      if (m.origin.partition !== undefined) {
        flags |= 8;
        w[11] = m.origin.partition;
      }
      if (m.origin.offset !== undefined) {
        flags |= 16;
        w[12] = Number(m.origin.offset & 0xffffffffn);
        w[13] = Number(m.origin.offset >> 32n);
      }
      if (m.origin.id !== undefined) {
        flags |= 32;
        [w[14], w[15]] = span(m.origin.id);
      }
    }
    w[0] = flags;
    table.push(w);
  }
  const total = dataOff;
  const buffer = new Uint8Array(shift + total).subarray(shift);
  const view = new DataView(buffer.buffer, buffer.byteOffset, total);
  const put = (wordIndex, value) => view.setUint32(wordIndex * 4, value, true);
  [BATCH_MAGIC, 1, messages.length, headerCount, messagesOff, headersOff, total, 0].forEach((v, i) => put(i, v));
  table.forEach((w, i) => w.forEach((v, j) => put(messagesOff / 4 + i * 16 + j, v)));
  headerTable.forEach((w, i) => w.forEach((v, j) => put(headersOff / 4 + i * 4 + j, v)));
  let at = headersOff + headerCount * 16;
  for (const bytes of data) {
    buffer.set(bytes, at);
    at += bytes.length;
  }
  return buffer;
}

/**
 * Decodes a reply, checking everything the doc says the host checks, and
 * returns `{ outcomes, routes }`: an outcome is `{ keep: true }`,
 * `{ fail: reason }` or `{ emit: [output] }`, an output
 * `{ key: Uint8Array | null, value, headers: [name, Uint8Array][], timestampMs: bigint | null, route: string | null }`.
 */
export function decodeReply(reply, expectedCount) {
  const fail = (why) => {
    throw new Error(`invalid reply: ${why}`);
  };
  if (!(reply instanceof Uint8Array)) fail("not a Uint8Array");
  if (reply.length < 48) fail("shorter than the header");
  const view = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
  const word = (off) => view.getUint32(off, true);
  if (word(0) !== REPLY_MAGIC) fail("magic");
  if (word(4) !== 1) fail("version");
  const [outcomeCount, outputCount, headerCount, routeCount] = [word(8), word(12), word(16), word(20)];
  const [outcomesOff, outputsOff, headersOff, routesOff] = [word(24), word(28), word(32), word(36)];
  if (word(40) !== reply.length) fail(`total_len ${word(40)} ≠ ${reply.length}`);
  if (word(44) !== 0) fail("reserved header word");
  if (outcomeCount !== expectedCount) fail(`outcome_count ${outcomeCount} ≠ ${expectedCount}`);
  const tables = [
    [outcomesOff, outcomeCount * 16],
    [outputsOff, outputCount * 48],
    [headersOff, headerCount * 16],
    [routesOff, routeCount * 8],
  ];
  for (const [off, size] of tables) {
    if (off % 8 !== 0) fail(`table at ${off} is not 8-aligned`);
    if (off < 48 || off + size > reply.length) fail("a table does not fit");
  }
  const bytesAt = (off, len) => {
    if (off + len > reply.length) fail(`span ${off}+${len} outside the buffer`);
    return reply.slice(off, off + len);
  };
  const textAt = (off, len, what) => {
    try {
      return strictUtf8.decode(bytesAt(off, len));
    } catch {
      fail(`${what} is not UTF-8`);
    }
  };
  const routes = [];
  for (let r = 0; r < routeCount; r++) routes.push(textAt(word(routesOff + r * 8), word(routesOff + r * 8 + 4), "route"));

  let nextOutput = 0;
  let nextHeader = 0;
  const outcomes = [];
  for (let i = 0; i < outcomeCount; i++) {
    const at = outcomesOff + i * 16;
    const [kind, a, b, reserved] = [word(at), word(at + 4), word(at + 8), word(at + 12)];
    if (reserved !== 0) fail("reserved outcome word");
    if (kind === 1) {
      if (a !== 0 || b !== 0) fail("keep with non-zero words");
      outcomes.push({ keep: true });
    } else if (kind === 2) {
      outcomes.push({ fail: textAt(a, b, "reason") });
    } else if (kind === 0) {
      if (a !== nextOutput) fail(`emit first ${a} ≠ ${nextOutput}`);
      const outputs = [];
      for (let k = a; k < a + b; k++) {
        if (k >= outputCount) fail("emit range past the output table");
        const o = outputsOff + k * 48;
        const w = (j) => word(o + j * 4);
        const flags = w(0);
        if (flags & ~7) fail("unknown output flags");
        if (w(10) !== 0 || w(11) !== 0) fail("reserved output word");
        if (w(5) !== nextHeader) fail(`headers_first ${w(5)} ≠ ${nextHeader}`);
        const headers = [];
        for (let j = w(5); j < w(5) + w(6); j++) {
          if (j >= headerCount) fail("header range past the header table");
          const h = headersOff + j * 16;
          headers.push([textAt(word(h), word(h + 4), "header name"), bytesAt(word(h + 8), word(h + 12))]);
        }
        nextHeader += w(6);
        if (flags & 4 && w(9) >= routeCount) fail("route index outside the route table");
        outputs.push({
          key: flags & 1 ? bytesAt(w(1), w(2)) : null,
          value: bytesAt(w(3), w(4)),
          headers,
          timestampMs: flags & 2 ? (BigInt(w(8)) << 32n) | BigInt(w(7)) : null,
          route: flags & 4 ? routes[w(9)] : null,
        });
      }
      nextOutput += b;
      outcomes.push({ emit: outputs });
    } else {
      fail(`unknown outcome kind ${kind}`);
    }
  }
  if (nextOutput !== outputCount) fail("emit counts do not add up to output_count");
  if (nextHeader !== headerCount) fail("header counts do not add up to header_count");
  return { outcomes, routes };
}

export const text = (bytes) => strictUtf8.decode(bytes);
