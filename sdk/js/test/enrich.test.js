// The `enrich` example (examples/js-enrich) on the packed world against the
// fixtures every language shares (examples/fixtures/enrich).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { decodeReply, encodeBatch, text } from "./reference.js";
import { sdk } from "./sdk.js";

const fixtures = new URL("../../../examples/fixtures/enrich/", import.meta.url);
const lines = (name) => readFileSync(new URL(name, fixtures), "utf8").split("\n").filter((l) => l.trim() !== "");

test("the JS enrich example passes the shared fixtures on the packed world", async () => {
  const { packedExport } = await import("../packed.js");
  const plugin = await import("../../../examples/js-enrich/enrich.js");
  assert.equal(typeof sdk.processor, "function");
  plugin.init([["region", "eu-west"]]);
  const processPacked = packedExport(plugin);

  const inputs = lines("input.ndjson").map((line) => {
    const e = JSON.parse(line);
    return {
      key: e.key ?? undefined,
      value: typeof e.value === "string" ? e.value : JSON.stringify(e.value),
      headers: Object.entries(e.headers ?? {}),
      timestampMs: e.timestamp_ms === undefined ? undefined : BigInt(e.timestamp_ms),
    };
  });
  const actual = [];
  // The whole fixture as one batch, then one message at a time: same lines.
  for (const batches of [[inputs], inputs.map((m) => [m])]) {
    const run = [];
    for (const batch of batches) {
      for (const outcome of decodeReply(processPacked(encodeBatch(batch)), batch.length).outcomes) {
        if (outcome.fail !== undefined) run.push({ fail: outcome.fail });
        for (const o of outcome.emit ?? []) {
          const line = { value: text(o.value) };
          if (o.key !== null) line.key = text(o.key);
          if (o.headers.length) line.headers = Object.fromEntries(o.headers.map(([n, v]) => [n, text(v)]));
          if (o.timestampMs !== null) line.timestamp_ms = Number(o.timestampMs);
          if (o.route !== null) line.route = o.route;
          run.push(line);
        }
        assert.equal(outcome.keep, undefined, "enrich never forwards its input unchanged");
      }
    }
    actual.push(run);
  }
  assert.deepEqual(actual[1], actual[0], "batching changed the outcomes");
  const expected = lines("expected.ndjson").map((line) => JSON.parse(line));
  assert.equal(actual[0].length, expected.length);
  expected.forEach((want, i) => {
    const got = actual[0][i];
    if (want.timestamp_ms === undefined) delete got.timestamp_ms;
    assert.deepEqual(got, want, `line ${i + 1}`);
  });
});
