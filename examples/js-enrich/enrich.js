// The `enrich` example processor, in JavaScript (see examples/README.md).
//
// Parses each value as a JSON event, drops debug events, enriches the rest
// with the stage's `region`, keys them by user, routes alerts, copies large
// amounts to an audit route, and fails malformed input.

import { Fail, processor } from "weir-sdk";

class Enrich {
  init(config) {
    this.region = config.require("region");
    this.alertLevel = config.get("alert_level") ?? "error";
    this.auditOver = config.getInt("audit_over", 1000);
    this.userField = config.get("user_field") ?? "user";
  }

  process(message) {
    let event;
    try {
      event = message.json();
    } catch {
      event = undefined;
    }
    if (event === null || typeof event !== "object" || Array.isArray(event)) {
      // An uncaught exception fails this message, like a Rust `fail`.
      throw new Error("malformed input: value is not a JSON object");
    }
    const level = typeof event.level === "string" ? event.level : "info";
    if (level === "debug") return null;
    const user = event[this.userField];
    if (typeof user !== "string" || user === "") return new Fail(`missing field: ${this.userField}`);
    const amount = "amount" in event ? event.amount : 0;
    if (!Number.isInteger(amount)) throw new Fail("invalid field: amount");
    const enriched = {
      user,
      action: typeof event.action === "string" ? event.action : "unknown",
      level,
      amount,
      region: this.region,
    };
    const out = message.withJson(enriched, { key: user }).withHeader("region", this.region);
    if (level === this.alertLevel) out.withRoute("alerts");
    if (amount >= this.auditOver) {
      return [out, message.withJson(enriched, { key: user, route: "audit" }).withHeader("region", this.region)];
    }
    return out;
  }
}

export const { init, process } = processor(Enrich);
