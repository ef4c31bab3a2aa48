// Stands in for the `weir:processor/host@0.1.0` import under node; records
// what the SDK asked of the host.
export const calls = { log: [], counters: new Map() };
const state = new Map();
const key = (bytes) => Buffer.from(bytes).toString("hex");

export function log(level, text) {
  calls.log.push([level, text]);
}
export function stateGet(k) {
  return state.get(key(k));
}
export function stateSet(k, value) {
  state.set(key(k), Uint8Array.from(value));
}
export function stateDelete(k) {
  state.delete(key(k));
}
export function counterAdd(name, delta) {
  if (typeof delta !== "bigint") throw new TypeError("counter-add takes a u64 (bigint)");
  calls.counters.set(name, (calls.counters.get(name) ?? 0n) + delta);
}
