// The codec (packed.js) against the reference codec: batches are read as the
// doc says, replies are valid by the doc's rules.
import assert from "node:assert/strict";
import { test } from "node:test";

import { PackedBatch, ReplyWriter, adaptRecordProcess, packedExport } from "../packed.js";
import { decodeReply, encodeBatch, text } from "./reference.js";

const BIG_TS = 2n ** 40n + 5n; // needs both timestamp words
const messages = [
  { key: "k1", value: "v1", headers: [["a", "1"], ["b", "2"], ["a", "3"]], timestampMs: BIG_TS },
  { value: "" }, // no key, no timestamp, no headers
  { key: "", value: "x", origin: { name: "orders", partition: 7, offset: 2n ** 33n + 1n, id: "1-0" } },
  { value: "y", headers: [["é", new Uint8Array([0, 255])]], origin: { name: "file" } },
];

for (const shift of [0, 1, 2, 3, 4]) {
  test(`a batch is read as the doc lays it out (byteOffset + ${shift})`, () => {
    const batch = new PackedBatch(encodeBatch(messages, { shift }));
    assert.equal(batch.count, 4);
    assert.equal(text(batch.key(0)), "k1");
    assert.equal(batch.key(1), undefined, "no key");
    assert.deepEqual(batch.key(2), new Uint8Array(0), "empty key is not no key");
    assert.equal(text(batch.value(0)), "v1");
    assert.equal(batch.value(1).length, 0);
    assert.deepEqual(
      batch.headers(0).map((h) => [h.name, text(h.value)]),
      [["a", "1"], ["b", "2"], ["a", "3"]],
      "duplicate names kept, in order",
    );
    assert.equal(text(batch.header(0, "a")), "1", "header() is the first of that name");
    assert.equal(batch.header(0, "c"), undefined);
    assert.deepEqual(batch.header(3, "é"), new Uint8Array([0, 255]));
    assert.deepEqual(batch.headers(1), []);
    assert.equal(batch.timestampMs(0), Number(BIG_TS));
    assert.equal(batch.timestampMs(1), undefined);
    assert.deepEqual(batch.origin(2), { name: "orders", partition: 7, offset: 2 ** 33 + 1, id: "1-0" });
    assert.deepEqual(batch.origin(3), { name: "file" });
    assert.equal(batch.origin(0), undefined);
    assert.deepEqual(batch.record(2).origin.offset, 2n ** 33n + 1n, "the record form keeps u64s exact");
    assert.equal(batch.record(0).timestampMs, BIG_TS);
  });
}

test("an empty batch gets an empty reply", () => {
  const batch = new PackedBatch(encodeBatch([]));
  assert.equal(batch.count, 0);
  const writer = new ReplyWriter();
  writer.begin(0);
  assert.deepEqual(decodeReply(writer.finish(), 0), { outcomes: [], routes: [] });
});

test("a malformed batch is refused", () => {
  const good = encodeBatch(messages);
  assert.throws(() => new PackedBatch(good.subarray(0, 16)), /shorter than its header/);
  const magic = good.slice();
  magic[0] ^= 1;
  assert.throws(() => new PackedBatch(magic), /magic/);
  assert.throws(() => new PackedBatch(good.subarray(0, good.length - 1)), /total_len/);
});

test("the writer encodes keep, fail, drop, emit and flat-map per the doc", () => {
  const writer = new ReplyWriter();
  const bytes = (s) => new TextEncoder().encode(s);
  writer.begin(6);
  writer.keep();
  writer.fail("bad ✗");
  writer.drop();
  writer.emit({ key: bytes(""), value: bytes("one"), headers: [{ name: "h", value: bytes("1") }, { name: "h", value: bytes("2") }], timestampMs: 2 ** 40 + 5, route: "alerts" });
  writer.emitMany([
    { value: bytes("two"), headers: [], route: "audit" },
    { key: bytes("k"), value: bytes("three"), headers: [{ name: "x", value: bytes("") }], timestampMs: 2n ** 63n, route: "alerts" },
  ]);
  writer.emitMany([{ key: "ключ", value: "значение ✓" }]);
  const { outcomes, routes } = decodeReply(writer.finish(), 6);
  assert.deepEqual(routes, ["alerts", "audit"], "each route once");
  assert.deepEqual(outcomes[0], { keep: true });
  assert.deepEqual(outcomes[1], { fail: "bad ✗" });
  assert.deepEqual(outcomes[2], { emit: [] });
  assert.deepEqual(outcomes[5].emit.map((o) => [text(o.key), text(o.value)]), [["ключ", "значение ✓"]], "strings are written as UTF-8");
  const [one] = outcomes[3].emit;
  assert.deepEqual(one.key, new Uint8Array(0), "empty key is present");
  assert.deepEqual(one.headers.map(([n, v]) => [n, text(v)]), [["h", "1"], ["h", "2"]]);
  assert.equal(one.timestampMs, 2n ** 40n + 5n);
  assert.equal(one.route, "alerts");
  const [two, three] = outcomes[4].emit;
  assert.equal(two.key, null, "no key");
  assert.equal(two.timestampMs, null);
  assert.equal(two.route, "audit");
  assert.equal(text(three.value), "three");
  assert.equal(three.timestampMs, 2n ** 63n, "u64 timestamps beyond 2^53 stay exact as bigints");
  assert.equal(three.route, "alerts");
});

test("the writer refuses a malformed output without recording anything", () => {
  const writer = new ReplyWriter();
  writer.begin(1);
  const value = new Uint8Array(1);
  assert.throws(() => writer.emit({ value: 42 }), /value must be a Uint8Array or a string/);
  assert.throws(() => writer.emit({ value, key: [1] }), /key must be a Uint8Array or a string/);
  assert.throws(() => writer.emitMany([{ value, route: "gone" }, { value, timestampMs: -1 }]), /timestampMs/);
  assert.throws(() => writer.emit({ value, headers: [{ name: 1, value }] }), /header/);
  assert.throws(() => writer.emit({ value, route: 5 }), /route/);
  writer.emit({ value, route: "r" });
  const { outcomes, routes } = decodeReply(writer.finish(), 1);
  assert.equal(outcomes[0].emit.length, 1);
  assert.deepEqual(routes, ["r"], "a route of a refused output is forgotten");
});

test("the writer grows its buffer and is reusable across batches", () => {
  const writer = new ReplyWriter();
  const big = new Uint8Array(200_000).fill(7);
  writer.begin(1);
  writer.emit({ value: big, route: "r" });
  let { outcomes } = decodeReply(writer.finish(), 1);
  assert.deepEqual(outcomes[0].emit[0].value, big);
  writer.begin(1);
  writer.keep();
  ({ outcomes } = decodeReply(writer.finish(), 1));
  assert.deepEqual(outcomes, [{ keep: true }]);
});

test("a hand-written record-world process runs on the packed world", () => {
  const seen = [];
  const process = (batch) =>
    batch.map((m) => {
      seen.push(m);
      if (m.key === undefined) return { tag: "fail", val: "no key" };
      return { tag: "emit", val: [{ key: m.key, value: m.value, headers: m.headers, timestampMs: m.timestampMs, route: undefined }] };
    });
  const plugin = { init() {}, process };
  const processPacked = packedExport(plugin);
  const { outcomes } = decodeReply(processPacked(encodeBatch(messages)), 4);
  assert.equal(seen[0].timestampMs, BIG_TS, "record-world timestamps are bigints");
  assert.equal(seen[2].origin.offset, 2n ** 33n + 1n);
  assert.equal(outcomes[0].emit[0].timestampMs, BIG_TS);
  assert.deepEqual(outcomes[0].emit[0].headers.map(([n, v]) => [n, text(v)]), [["a", "1"], ["b", "2"], ["a", "3"]]);
  assert.deepEqual(outcomes[1], { fail: "no key" });
  assert.deepEqual(outcomes[2].emit[0].key, new Uint8Array(0));
  assert.throws(() => adaptRecordProcess(() => [{ tag: "nope" }])(encodeBatch([{ value: "" }])), /outcome/);
});

test("packedExport prefers the module's own processPacked, then the SDK's", () => {
  const own = () => new Uint8Array();
  const sdk = () => new Uint8Array();
  const process = Object.assign(() => [], { packed: sdk });
  assert.equal(packedExport({ processPacked: own, process }), own);
  assert.equal(packedExport({ process }), sdk);
  assert.throws(() => packedExport({ init() {} }), /neither/);
});

test("tables grow past their first size", () => {
  const writer = new ReplyWriter();
  const bytes = (s) => new TextEncoder().encode(s);
  writer.begin(1000);
  for (let i = 0; i < 1000; i++) {
    const headers = [0, 1, 2].map((j) => ({ name: `h${j}`, value: bytes(String(i)) }));
    writer.emitMany([{ value: bytes(`a${i}`), headers, route: `r${i % 3}` }, { value: bytes(`b${i}`) }]);
  }
  const { outcomes, routes } = decodeReply(writer.finish(), 1000);
  assert.deepEqual(routes, ["r0", "r1", "r2"]);
  const [a, b] = outcomes[999].emit;
  assert.equal(text(a.value), "a999");
  assert.deepEqual(a.headers.map(([n, v]) => [n, text(v)]), [["h0", "999"], ["h1", "999"], ["h2", "999"]]);
  assert.equal(a.route, "r0");
  assert.equal(text(b.value), "b999");
});

test("more or fewer outcomes than messages is a bug the writer refuses", () => {
  const writer = new ReplyWriter();
  writer.begin(1);
  assert.throws(() => writer.finish(), /0 outcomes for the 1 messages/);
  writer.keep();
  assert.throws(() => writer.keep(), /more outcomes/);
});
