// Test plugin: forwards every message unchanged (`return message`), the cost
// floor of a JavaScript stage. Used by the `languages` benchmark.
import { processor } from "weir-sdk";

class Identity {
  process(message) {
    return message;
  }
}

export const { init, process } = processor(Identity);
