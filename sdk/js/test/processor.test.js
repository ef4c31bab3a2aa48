// The SDK end to end on the packed world: a batch encoded by the reference
// codec, through `processor()`'s packed export, and the reply checked by the
// reference decoder. And the same class on the record world.
import assert from "node:assert/strict";
import { test } from "node:test";

import { decodeReply, encodeBatch, text } from "./reference.js";
import { host, sdk } from "./sdk.js";

const { Fail, Message, Output, processor } = sdk;

/** Runs `Class` over `messages` on the packed world; returns the decoded reply. */
function runPacked(Class, messages, config = []) {
  const { init, process } = processor(Class);
  init(config);
  return decodeReply(process.packed(encodeBatch(messages)), messages.length);
}

const texts = (headers) => headers.map(([n, v]) => [n, text(v)]);

test("every outcome kind, one batch", () => {
  class All {
    process(m) {
      switch (m.text) {
        case "identity": return m;
        case "drop": return null;
        case "fail": return new Fail("returned");
        case "throw-fail": throw new Fail("thrown");
        case "throw": throw new TypeError("boom");
        case "throw-string": throw "plain";
        case "string": return "replaced";
        case "bytes": return new Uint8Array([1, 2]);
        case "many": return [m.withRoute("alerts"), null, "second", m.output(undefined, { route: "audit" }), m.withRoute("alerts")];
        case "fail-in-list": return ["x", new Fail("in a list")];
        case "bad": return 42;
        case "bad-output": return Object.assign(new Output("y"), { timestampMs: -5 });
        default: throw new Error("unexpected");
      }
    }
  }
  const inputs = ["identity", "drop", "fail", "throw-fail", "throw", "throw-string", "string", "bytes", "many", "fail-in-list", "bad", "bad-output"];
  const { outcomes, routes } = runPacked(
    All,
    inputs.map((value) => ({ key: "k", value, headers: [["h", "1"]], timestampMs: 2n ** 41n })),
  );
  const at = (name) => outcomes[inputs.indexOf(name)];
  assert.deepEqual(at("identity"), { keep: true }, "the input returned unchanged is kept");
  assert.deepEqual(at("drop"), { emit: [] });
  assert.deepEqual(at("fail"), { fail: "returned" });
  assert.deepEqual(at("throw-fail"), { fail: "thrown" });
  assert.deepEqual(at("throw"), { fail: "boom" });
  assert.deepEqual(at("throw-string"), { fail: "plain" });
  for (const [name, value] of [["string", "replaced"], ["bytes", "\u0001\u0002"]]) {
    const [out] = at(name).emit;
    assert.equal(text(out.value), value);
    assert.equal(text(out.key), "k", "bytes and strings keep the input's key");
    assert.deepEqual(texts(out.headers), [["h", "1"]]);
    assert.equal(out.timestampMs, 2n ** 41n, "and its timestamp");
    assert.equal(out.route, null);
  }
  const many = at("many").emit;
  assert.deepEqual(many.map((o) => [text(o.value), o.route]), [["many", "alerts"], ["second", null], ["many", "audit"], ["many", "alerts"]]);
  assert.deepEqual(routes, ["alerts", "audit"], "routes deduplicated per reply");
  assert.deepEqual(at("fail-in-list"), { fail: "in a list" });
  assert.match(at("bad").fail, /process returned number/);
  assert.match(at("bad-output").fail, /timestampMs/, "a malformed output fails its message only");
  assert.ok(host.calls.log.some(([level, line]) => level === "debug" && line.startsWith("TypeError: boom")), "thrown errors are logged");
});

test("Fail is an Error without a stack", () => {
  const fail = new Fail("why");
  assert.ok(fail instanceof Error);
  assert.equal(fail.message, "why");
  assert.equal(fail.reason, "why");
  assert.equal(String(fail), "Fail: why");
  assert.equal(Object.hasOwn(fail, "stack"), false);
});

test("no key vs empty key, duplicate headers and big timestamps survive a round trip", () => {
  class Copy {
    process(m) {
      return m.output(m.value); // a copy, not a keep
    }
  }
  const { outcomes } = runPacked(Copy, [
    { value: "a" },
    { key: "", value: "b", headers: [["x", "1"], ["y", "2"], ["x", "3"]], timestampMs: 2n ** 32n + 1n },
    { key: "k", value: "c", timestampMs: 1700000000000n },
  ]);
  const [[a], [b], [c]] = outcomes.map((o) => o.emit);
  assert.equal(a.key, null);
  assert.equal(a.timestampMs, null);
  assert.deepEqual(b.key, new Uint8Array(0));
  assert.deepEqual(texts(b.headers), [["x", "1"], ["y", "2"], ["x", "3"]]);
  assert.equal(b.timestampMs, 2n ** 32n + 1n);
  assert.equal(c.timestampMs, 1700000000000n);
});

test("Message reads the batch lazily, with the documented API", () => {
  let seen;
  class Look {
    process(m) {
      seen = {
        key: m.key,
        keyText: m.keyText,
        text: m.text,
        json: m.json(),
        header: text(m.header("b")),
        headerText: m.headerText("a"),
        missing: m.header("zz"),
        timestampMs: m.timestampMs,
        origin: m.origin,
        sameValue: m.value === m.value,
      };
      return m;
    }
  }
  const { outcomes } = runPacked(Look, [
    {
      key: "k",
      value: '{"n": 1}',
      headers: [["a", "1"], ["b", "2"], ["a", "3"]],
      timestampMs: 2n ** 40n,
      origin: { name: "t", partition: 3, offset: 9n },
    },
  ]);
  assert.deepEqual(outcomes, [{ keep: true }], "reading a message does not change it");
  assert.equal(text(seen.key), "k");
  assert.equal(seen.keyText, "k");
  assert.equal(seen.text, '{"n": 1}');
  assert.deepEqual(seen.json, { n: 1 });
  assert.equal(seen.header, "2");
  assert.equal(seen.headerText, "1", "the first header of that name");
  assert.equal(seen.missing, undefined);
  assert.equal(seen.timestampMs, 2 ** 40, "timestamps are Numbers");
  assert.deepEqual(seen.origin, { name: "t", partition: 3, offset: 9 });
  assert.ok(seen.sameValue);
});

test("a message changed before being returned is emitted, not kept", () => {
  class Change {
    process(m) {
      switch (m.text) {
        case "value": m.value = "new"; break;
        case "key": m.key = null; break;
        case "ts": m.timestampMs = 5n; break;
        case "push": m.headers.push({ name: "added", value: new Uint8Array() }); break;
        case "entry": m.headers[0].value = new TextEncoder().encode("changed"); break;
        case "read": m.headers.length; break;
      }
      return m;
    }
  }
  const inputs = ["value", "key", "ts", "push", "entry", "read"];
  const { outcomes } = runPacked(Change, inputs.map((value) => ({ key: "k", value, headers: [["h", "1"]] })));
  const [value, key, ts, push, entry, read] = outcomes;
  assert.equal(text(value.emit[0].value), "new");
  assert.equal(key.emit[0].key, null);
  assert.equal(ts.emit[0].timestampMs, 5n);
  assert.deepEqual(texts(push.emit[0].headers), [["h", "1"], ["added", ""]]);
  assert.deepEqual(texts(entry.emit[0].headers), [["h", "changed"]]);
  assert.deepEqual(read, { keep: true });
});

const m0 = () => new Message({ value: new Uint8Array(), headers: [] });

test("Output and Message helpers keep their semantics", () => {
  class Helpers {
    process(m) {
      const out = m.withJson({ a: 1 }, { key: "user" }).withHeader("h", "2").withHeader("region", "eu");
      const fresh = Output.json([1], { key: "k", headers: { x: "y" }, timestampMs: 7, route: "r" });
      const headerOnly = m.withHeader("h", "9");
      return [out, fresh, headerOnly, new Output()];
    }
  }
  const { outcomes } = runPacked(Helpers, [{ value: "v", headers: [["h", "1"], ["keep", "me"], ["h", "3"]], timestampMs: 9n }]);
  const [out, fresh, headerOnly, empty] = outcomes[0].emit;
  assert.equal(text(out.value), '{"a":1}');
  assert.equal(text(out.key), "user");
  assert.deepEqual(texts(out.headers), [["keep", "me"], ["h", "2"], ["region", "eu"]], "withHeader replaces every header of that name");
  assert.equal(out.timestampMs, 9n);
  assert.equal(text(fresh.value), "[1]");
  assert.deepEqual(texts(fresh.headers), [["x", "y"]]);
  assert.equal(fresh.timestampMs, 7n);
  assert.equal(fresh.route, "r");
  assert.deepEqual(texts(headerOnly.headers), [["keep", "me"], ["h", "9"]]);
  assert.equal(text(headerOnly.value), "v");
  assert.equal(empty.value.length, 0);
  assert.equal(empty.key, null);
  const json = m0().withJson({ é: 1 });
  assert.deepEqual(json.value, new TextEncoder().encode('{"é":1}'), "a string value reads as its UTF-8 bytes");
  assert.deepEqual(new Output("v", { key: "k" }).key, new TextEncoder().encode("k"));
  assert.equal(new Output("v").key, undefined);
  assert.equal(new Output("x").withTimestamp(2n ** 60n).timestampMs, 2n ** 60n, "beyond 2^53 a bigint stays exact");
  assert.equal(new Output("x").withTimestamp(3n).timestampMs, 3);
  assert.throws(() => new Output("x").withTimestamp(1.5), /timestampMs/);
});

test("processBatch sees the whole batch", () => {
  class Batch {
    processBatch(messages) {
      return messages.map((m, i) => (i === 0 ? m : i === 1 ? messages[0] : new Fail(`#${i}`)));
    }
  }
  const { outcomes } = runPacked(Batch, [{ value: "a" }, { value: "b" }, { value: "c" }]);
  assert.deepEqual(outcomes[0], { keep: true });
  assert.equal(text(outcomes[1].emit[0].value), "a", "another message is emitted as an output");
  assert.deepEqual(outcomes[2], { fail: "#2" });

  class Short {
    processBatch() {
      return [];
    }
  }
  assert.deepEqual(runPacked(Short, [{ value: "a" }]).outcomes, [{ fail: "processBatch returned 0 outcomes for 1 messages" }]);
  class Throws {
    processBatch() {
      throw new Fail("all of them");
    }
  }
  assert.deepEqual(runPacked(Throws, [{ value: "a" }, { value: "b" }]).outcomes, [{ fail: "all of them" }, { fail: "all of them" }]);
});

test("init: config, refusal, and use before init", () => {
  class Needs {
    init(config) {
      this.region = config.require("region");
      this.n = config.getInt("n", 1);
    }
    process(m) {
      return m.output(`${this.region}/${this.n}`);
    }
  }
  const { outcomes } = runPacked(Needs, [{ value: "" }], [["region", "eu"], ["n", "3"]]);
  assert.equal(text(outcomes[0].emit[0].value), "eu/3");
  assert.throws(() => processor(Needs).init([]), (e) => e === "missing config key `region`");
  const { process } = processor(Needs);
  assert.deepEqual(decodeReply(process.packed(encodeBatch([{ value: "" }])), 1).outcomes, [{ fail: "plugin used before init" }]);
});

test("the record world: same class, WIT outcomes", () => {
  class Mixed {
    process(m) {
      if (m.text === "keep") return m;
      if (m.text === "fail") throw new Fail("no");
      return m.withJson({ ts: m.timestampMs }).withRoute("r");
    }
  }
  const { init, process } = processor(Mixed);
  init([]);
  const value = (s) => new TextEncoder().encode(s);
  const outcomes = process([
    { key: value("k"), value: value("keep"), headers: [{ name: "h", value: value("1") }], timestampMs: 2n ** 40n },
    { value: value("fail"), headers: [] },
    { value: value("x"), headers: [], timestampMs: 5n },
  ]);
  assert.equal(outcomes[0].tag, "emit");
  const [kept] = outcomes[0].val;
  assert.equal(text(kept.value), "keep");
  assert.equal(kept.timestampMs, 2n ** 40n, "record-world timestamps are bigints");
  assert.deepEqual(outcomes[1], { tag: "fail", val: "no" });
  assert.equal(text(outcomes[2].val[0].value), '{"ts":5}');
  assert.equal(outcomes[2].val[0].route, "r");
});

test("new Message(record) wraps one record-world message", () => {
  const m = new Message({ value: new TextEncoder().encode('{"a":2}'), headers: [], timestampMs: 3n });
  assert.deepEqual(m.json(), { a: 2 });
  assert.equal(m.timestampMs, 3);
  assert.equal(m.key, undefined);
});

test("outputs inherit the input's headers until they are read", () => {
  class Inherit {
    process(m) {
      switch (m.text) {
        case "twice": return m.output().withHeader("h", "x").withHeader("h", "y");
        case "two-names": return m.output().withHeader("h", "x").withHeader("n", "z");
        case "read": {
          const out = m.output().withHeader("h", "x");
          const seen = out.headers.map((h) => h.name).join(",");
          return out.withHeader("seen", seen);
        }
        case "replaced": return m.output(undefined, { headers: { only: "1" } });
        case "changed-first": m.headers.push({ name: "extra", value: new Uint8Array([33]) }); return m.output();
      }
    }
  }
  const inputs = ["twice", "two-names", "read", "replaced", "changed-first"];
  const { outcomes } = runPacked(Inherit, inputs.map((value) => ({ value, headers: [["h", "1"], ["k", "2"], ["h", "3"]] })));
  const headersOf = (i) => texts(outcomes[i].emit[0].headers);
  assert.deepEqual(headersOf(0), [["k", "2"], ["h", "y"]]);
  assert.deepEqual(headersOf(1), [["k", "2"], ["h", "x"], ["n", "z"]]);
  assert.deepEqual(headersOf(2), [["k", "2"], ["h", "x"], ["seen", "k,h"]]);
  assert.deepEqual(headersOf(3), [["only", "1"]]);
  assert.deepEqual(headersOf(4), [["h", "1"], ["k", "2"], ["h", "3"], ["extra", "!"]]);
});
