"""The `enrich` example processor, in Python (see examples/README.md).

Parses each value as a JSON event, drops debug events, enriches the rest
with the stage's `region`, keys them by user, routes alerts, copies large
amounts to an audit route, and fails malformed input.
"""

from weir_sdk import Fail, Processor, export


class Enrich(Processor):
    def init(self, config):
        self.region = config.require("region")
        self.alert_level = config.get("alert_level", "error")
        self.audit_over = config.get_int("audit_over", 1000)
        self.user_field = config.get("user_field", "user")

    def process(self, message):
        try:
            event = message.json()
        except ValueError:
            event = None
        if not isinstance(event, dict):
            # An uncaught exception fails this message, like a Rust `fail`.
            raise ValueError("malformed input: value is not a JSON object")
        level = event.get("level")
        level = level if isinstance(level, str) else "info"
        if level == "debug":
            return None
        user = event.get(self.user_field)
        if not isinstance(user, str) or not user:
            return Fail(f"missing field: {self.user_field}")
        amount = event.get("amount", 0)
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise Fail("invalid field: amount")
        action = event.get("action")
        enriched = {
            "user": user,
            "action": action if isinstance(action, str) else "unknown",
            "level": level,
            "amount": amount,
            "region": self.region,
        }
        out = message.with_json(enriched, key=user).with_header("region", self.region)
        if level == self.alert_level:
            out.route = "alerts"
        if amount >= self.audit_over:
            return [out, message.with_json(enriched, key=user, route="audit").with_header("region", self.region)]
        return out


WitWorld = export(Enrich)
