// A module loader hook: resolves the component's host import to host-stub.js
// and `weir-sdk` to the SDK, as `weir build` does.
export async function resolve(specifier, context, next) {
  if (specifier === "weir-sdk") return { url: new URL("../weir.js", import.meta.url).href, shortCircuit: true };
  if (specifier === "weir:processor/host@0.1.0") {
    return { url: new URL("./host-stub.js", import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
