"""The weir Python SDK: write a weir stream processor as a Python class.

A processor is a class with a ``process(self, message)`` method (and
optionally ``init(self, config)`` and ``process_batch(self, batch)``),
exported as the component's world with :func:`export`::

    from weir_sdk import Processor, Fail, export

    class Upper(Processor):
        def init(self, config):
            self.suffix = config.get("suffix", "!")

        def process(self, message):
            return message.text.upper() + self.suffix

    WitWorld = export(Upper)

Build it with ``weir build FOLDER`` (componentize-py under the hood).

What ``process`` returns decides the message's outcome:

- ``None``: drop the message (filter);
- an :class:`Output`, the input :class:`Message`, ``bytes`` or ``str``: emit
  one output (bytes/str replace the value and keep the input's key, headers
  and timestamp);
- a ``list``/``tuple`` (or any iterator) of those: emit each (flat-map);
- a :class:`Fail` (returned or raised): fail the message; the stage's
  ``on_error`` policy applies.

Any other exception raised by ``process`` fails that message only, with the
exception's text as the reason: it never traps the instance.
"""

import json as _json
import struct as _struct
import sys as _sys
import traceback as _traceback

from componentize_py_types import Err as _Err
from wit_world.imports import host as _host
from wit_world.imports import types as _types

__all__ = [
    "Config",
    "Fail",
    "Header",
    "Message",
    "Origin",
    "Output",
    "Processor",
    "counter",
    "export",
    "log",
    "state",
]

Header = _types.Header
Origin = _types.Origin
Message = _types.Message
"""One input message: ``key`` (bytes or None), ``value`` (bytes), ``headers``
(list of :class:`Header`), ``timestamp_ms`` (int or None) and ``origin``
(:class:`Origin` or None), plus the helpers below."""


def _to_bytes(value, what="value"):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def _headers(headers):
    """Normalises a dict, a list of (name, value) pairs or of Headers."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    out = []
    for item in items:
        if isinstance(item, _types.Header):
            out.append(_types.Header(item.name, _to_bytes(item.value, "header value")))
        else:
            name, value = item
            out.append(_types.Header(str(name), _to_bytes(value, "header value")))
    return out


def _dumps(value):
    return _json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Fail(Exception):
    """Fails the message: return it or raise it from ``process``."""

    def __init__(self, reason):
        super().__init__(str(reason))
        self.reason = str(reason)

    def __repr__(self):
        return f"Fail({self.reason!r})"


class Output(_types.Output):
    """A message to emit. ``value`` and ``key`` accept bytes or str;
    ``headers`` a dict or a list of (name, value) pairs; ``route`` names the
    sinks that receive it (None: the default next hop)."""

    def __init__(self, value=b"", *, key=None, headers=None, timestamp_ms=None, route=None):
        self.key = None if key is None else _to_bytes(key, "key")
        self.value = _to_bytes(value)
        self.headers = _headers(headers)
        self.timestamp_ms = timestamp_ms
        self.route = route

    @classmethod
    def json(cls, value, **kwargs):
        """An output whose value is ``value`` encoded as compact JSON."""
        return cls(_dumps(value), **kwargs)

    def with_value(self, value):
        self.value = _to_bytes(value)
        return self

    def with_json(self, value):
        self.value = _dumps(value)
        return self

    def with_key(self, key):
        self.key = None if key is None else _to_bytes(key, "key")
        return self

    def with_route(self, route):
        self.route = route
        return self

    def with_header(self, name, value):
        """Sets header ``name``, replacing any header of that name."""
        self.headers = [h for h in self.headers if h.name != name]
        self.headers.append(_types.Header(name, _to_bytes(value, "header value")))
        return self

    def header(self, name):
        for h in self.headers:
            if h.name == name:
                return h.value
        return None

    def __repr__(self):
        return (
            f"Output(value={self.value!r}, key={self.key!r}, headers={self.headers!r}, "
            f"timestamp_ms={self.timestamp_ms!r}, route={self.route!r})"
        )


# Helpers on the generated Message type (kept as the generated dataclass so
# that a batch costs no extra wrapping).


def _text(self):
    """The value as UTF-8 text (raises on invalid UTF-8)."""
    return self.value.decode("utf-8")


def _key_text(self):
    """The key as UTF-8 text, or None without a key."""
    return None if self.key is None else self.key.decode("utf-8")


def _json_value(self):
    """The value parsed as JSON (raises ``ValueError`` when it is not JSON)."""
    return _json.loads(self.value)


def _header(self, name):
    """The value (bytes) of the first header called ``name``, or None."""
    for h in self.headers:
        if h.name == name:
            return h.value
    return None


def _header_text(self, name):
    value = _header(self, name)
    return None if value is None else value.decode("utf-8")


def _header_dict(self):
    """The headers as a dict of name to bytes (the last one wins)."""
    return {h.name: h.value for h in self.headers}


def _output(self, value=None, *, key=..., headers=..., timestamp_ms=..., route=None):
    """An output that keeps this message's key, headers and timestamp,
    with any of them (and the value) replaced."""
    out = Output.__new__(Output)
    out.value = self.value if value is None else _to_bytes(value)
    out.key = self.key if key is ... else (None if key is None else _to_bytes(key, "key"))
    out.headers = list(self.headers) if headers is ... else _headers(headers)
    out.timestamp_ms = self.timestamp_ms if timestamp_ms is ... else timestamp_ms
    out.route = route
    return out


def _with_json(self, value, **kwargs):
    """An output with this message's metadata and ``value`` as JSON."""
    return _output(self, _dumps(value), **kwargs)


def _with_route(self, route):
    """This message, unchanged, bound for ``route``."""
    return _output(self, route=route)


Message.text = property(_text)
Message.key_text = property(_key_text)
Message.json = _json_value
Message.header = _header
Message.header_text = _header_text
Message.header_dict = property(_header_dict)
Message.output = _output
Message.with_json = _with_json
Message.with_route = _with_route


class Config(dict):
    """The stage's ``config`` table (a dict of str to str)."""

    def require(self, name):
        """The value of ``name``; raises if it is not set (refusing the plugin)."""
        if name not in self:
            raise KeyError(f"missing config key `{name}`")
        return self[name]

    def get_int(self, name, default):
        raw = self.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"config key `{name}` = {raw!r}: not an integer") from None

    def get_bool(self, name, default):
        raw = self.get(name)
        if raw is None:
            return default
        if raw in ("true", "false"):
            return raw == "true"
        raise ValueError(f"config key `{name}` = {raw!r}: expected true or false")


class Processor:
    """Base class of a processor (subclassing it is optional)."""

    def init(self, config):
        """Called once per instance with the stage's :class:`Config`.
        Raise to refuse the configuration."""

    def process(self, message):
        raise NotImplementedError("a weir processor must define process(self, message)")


class _Log:
    """Logging to the host's log, tagged with the stage name."""

    def trace(self, text):
        _host.log(_host.Level.TRACE, str(text))

    def debug(self, text):
        _host.log(_host.Level.DEBUG, str(text))

    def info(self, text):
        _host.log(_host.Level.INFO, str(text))

    def warn(self, text):
        _host.log(_host.Level.WARN, str(text))

    warning = warn

    def error(self, text):
        _host.log(_host.Level.ERROR, str(text))


class _State:
    """The stage's key-value state, shared by its instances and kept across
    hot swaps and restarts. Keys and values are bytes (str is UTF-8 encoded)."""

    def get(self, key, default=None):
        value = _host.state_get(_to_bytes(key, "key"))
        return default if value is None else value

    def set(self, key, value):
        _host.state_set(_to_bytes(key, "key"), _to_bytes(value))

    def delete(self, key):
        _host.state_delete(_to_bytes(key, "key"))

    def get_int(self, key):
        """Reads ``key`` as a little-endian u64 (0 when absent or malformed),
        the encoding the Rust SDK's ``state::get_u64`` uses."""
        value = _host.state_get(_to_bytes(key, "key"))
        return _struct.unpack("<Q", value)[0] if value is not None and len(value) == 8 else 0

    def set_int(self, key, value):
        _host.state_set(_to_bytes(key, "key"), _struct.pack("<Q", value))


class _Counter:
    """Plugin-defined counters, exported by the host as metrics."""

    def add(self, name, delta=1):
        _host.counter_add(str(name), int(delta))


log = _Log()
state = _State()
counter = _Counter()

_EMIT = _types.Outcome_Emit
_FAIL = _types.Outcome_Fail
_DROP_PASS = (type(None),)


def _reason(exc):
    if isinstance(exc, Fail):
        return exc.reason
    text = str(exc)
    return text if text else type(exc).__name__


def _one(message, result):
    if isinstance(result, _types.Output):
        return result
    if isinstance(result, (bytes, str, bytearray, memoryview)):
        return _output(message, result)
    if isinstance(result, _types.Message):
        return _output(result)
    raise TypeError(
        f"process returned {type(result).__name__}: return an Output, bytes, str, "
        "a list of them, None or Fail"
    )


def _outcome(message, result):
    """Turns what ``process`` returned into an outcome."""
    if result is None:
        return _EMIT([])
    if isinstance(result, Fail):
        return _FAIL(result.reason)
    if isinstance(result, (list, tuple)) or hasattr(result, "__next__"):
        outputs = []
        for item in result:
            if isinstance(item, Fail):
                return _FAIL(item.reason)
            if item is not None:
                outputs.append(_one(message, item))
        return _EMIT(outputs)
    return _EMIT([_one(message, result)])


def _safe_outcome(message, result):
    try:
        return _outcome(message, result)
    except Exception as exc:  # a bad return value fails this message only
        return _FAIL(_reason(exc))


def _report(exc):
    # Full traceback at debug level: the reason itself is the exception text.
    try:
        _host.log(_host.Level.DEBUG, "".join(_traceback.format_exception(exc)).rstrip())
    except Exception:
        pass


def export(processor_class):
    """Exports ``processor_class`` as the component's ``processor`` world.
    Bind the result to ``WitWorld`` at module level: ``WitWorld = export(MyProcessor)``."""
    import wit_world

    if not callable(getattr(processor_class, "process", None)):
        raise TypeError(f"{processor_class.__name__} has no process(self, message) method")
    holder = {}
    batch_override = getattr(processor_class, "process_batch", None)

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            try:
                instance = processor_class()
                init = getattr(instance, "init", None)
                if init is not None:
                    init(Config(config))
            except Exception as exc:
                raise _Err(f"{_reason(exc)}") from None
            holder["instance"] = instance

        def process(self, batch):
            instance = holder.get("instance")
            if instance is None:
                return [_FAIL("plugin used before init") for _ in batch]
            if batch_override is not None:
                try:
                    results = list(instance.process_batch(batch))
                except Exception as exc:
                    _report(exc)
                    reason = _reason(exc)
                    return [_FAIL(reason) for _ in batch]
                if len(results) != len(batch):
                    reason = f"process_batch returned {len(results)} outcomes for {len(batch)} messages"
                    return [_FAIL(reason) for _ in batch]
                return [_safe_outcome(m, r) for m, r in zip(batch, results)]
            process = instance.process
            outcomes = []
            for message in batch:
                try:
                    outcomes.append(_outcome(message, process(message)))
                except Exception as exc:
                    _report(exc)
                    outcomes.append(_FAIL(_reason(exc)))
            return outcomes

    return WitWorld
