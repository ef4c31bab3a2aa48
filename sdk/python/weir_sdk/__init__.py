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
  and timestamp; the input message itself, unmodified, is forwarded as it is
  without being copied back);
- a ``list``/``tuple`` (or any iterator) of those: emit each (flat-map);
- a :class:`Fail` (returned or raised): fail the message; the stage's
  ``on_error`` policy applies.

Any other exception raised by ``process`` fails that message only, with the
exception's text as the reason: it never traps the instance.

The class :func:`export` returns implements both processor worlds:
``processor-packed`` (what ``weir build`` builds; ``_packed.py``) and the
record world ``processor``.
"""

import struct as _struct
import traceback as _traceback

from componentize_py_types import Err as _Err
from wit_world.imports import host as _host
from wit_world.imports import types as _types

from . import _packed
from ._message import Fail, Header, Message, Origin, Output
from ._message import check_output as _check_output
from ._message import reason as _reason
from ._message import run as _run
from ._message import to_bytes as _to_bytes

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


def _report(exc):
    # Its traceback at debug level, for the first exception of a batch only
    # (formatting is slow): every failed message has its reason already.
    try:
        _host.log(_host.Level.DEBUG, "".join(_traceback.format_exception(exc)).rstrip())
    except Exception:
        pass


def _record_message(m):
    origin = m.origin
    return Message(
        m.key,
        m.value,
        [Header(h.name, h.value) for h in m.headers],
        m.timestamp_ms,
        None if origin is None else Origin(origin.name, origin.partition, origin.offset, origin.id),
    )


def _record_outcome(item):
    # Messages built from records are never kept: an item is a list or a reason.
    if type(item) is str:
        return _FAIL(item)
    try:
        for out in item:
            _check_output(out)
    except Exception as exc:
        return _FAIL(f"invalid output: {exc}")
    return _EMIT(item)


def export(processor_class):
    """Exports ``processor_class`` as the component's world, ``processor-packed``
    or ``processor`` (the class has the methods of both; componentize-py calls
    those of the world it builds). Bind the result to ``WitWorld`` at module
    level: ``WitWorld = export(MyProcessor)``."""
    import wit_world

    if not callable(getattr(processor_class, "process", None)):
        raise TypeError(f"{processor_class.__name__} has no process(self, message) method")
    holder = {}

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            try:
                instance = processor_class()
                init = getattr(instance, "init", None)
                if init is not None:
                    init(Config(config))
            except Exception as exc:
                raise _Err(_reason(exc)) from None
            holder["instance"] = instance

        def process_packed(self, batch):
            instance = holder.get("instance")
            if instance is None:
                return _packed.fail_all(batch, "plugin used before init")
            return _packed.process(instance, batch, _report)

        def process(self, batch):
            instance = holder.get("instance")
            if instance is None:
                return [_FAIL("plugin used before init") for _ in batch]
            plan = _run(instance, [_record_message(m) for m in batch], _report)
            return [_record_outcome(item) for item in plan]

    return WitWorld
