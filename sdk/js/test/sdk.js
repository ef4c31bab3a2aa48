// Imports the SDK under node, with its host import served by host-stub.js.
import { register } from "node:module";

register("./host-loader.js", import.meta.url);

export const sdk = await import("../weir.js");
export const host = await import("./host-stub.js");
