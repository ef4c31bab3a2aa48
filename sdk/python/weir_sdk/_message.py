"""The values a processor sees and returns, shared by both worlds.

Pure Python (no ``wit_world`` import), so it runs under plain CPython too.
A :class:`Message` read from a packed batch (docs/packed-abi.md) is lazy: it
holds the batch and its position, and slices a field out of the buffer only
when the processor reads it.
"""

import json as _json
import struct as _struct
from collections import namedtuple as _namedtuple
from operator import add as _add

_new = object.__new__
_tuple_new = tuple.__new__
_HEADER_ENTRY = _struct.Struct("<4I")

# json.dumps with non-default arguments builds a JSONEncoder per call, and
# each encode() builds the C encoder again: build both once. After an error
# the C encoder's markers (for cycles) may hold stale ids: clear them.
_ENCODER = _json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_MARKERS = {}
_MAKE_C_ENCODER = _json.encoder.c_make_encoder  # None without the C accelerator
_C_ENCODER = None
if _MAKE_C_ENCODER is not None:
    _C_ENCODER = _MAKE_C_ENCODER(
        _MARKERS, _ENCODER.default, _json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
_DECODER = _json.JSONDecoder()
_SCAN = _DECODER.scan_once
_WHITESPACE = _json.decoder.WHITESPACE.match


def dumps(value):
    """``value`` as compact UTF-8 JSON."""
    if _C_ENCODER is None:
        return _ENCODER.encode(value).encode("utf-8")
    try:
        return "".join(_C_ENCODER(value, 0)).encode("utf-8")
    except BaseException:
        _MARKERS.clear()
        raise


def _loads(data):
    """json.loads(data), skipping its Python-level layers for the usual
    case. json.loads(bytes) sniffs for UTF-16/32 and BOMs first: a value
    that starts with `{` or `[` and a non-zero byte can only be UTF-8."""
    if len(data) < 2 or data[0] not in b"{[" or not data[1]:
        return _json.loads(data)
    text = data.decode("utf-8", "surrogatepass")
    try:
        value, end = _SCAN(text, 0)
    except StopIteration as err:
        raise _json.JSONDecodeError("Expecting value", text, err.value) from None
    if end != len(text):
        end = _WHITESPACE(text, end).end()
        if end != len(text):
            raise _json.JSONDecodeError("Extra data", text, end)
    return value


def to_bytes(value, what="value"):
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


class Header(_namedtuple("Header", "name value")):
    """A header: ``name`` (str) and ``value`` (bytes). Immutable, so one
    header can be shared by many outputs."""

    __slots__ = ()

    def __new__(cls, name, value):
        return _tuple_new(cls, (str(name), to_bytes(value, "header value")))


Origin = _namedtuple("Origin", "name partition offset id")
Origin.__doc__ = """Where a message was read from: ``name`` (topic, stream or
file), ``partition``, ``offset`` (int) and ``id`` (str), each None when the
source has none."""


def headers_list(headers):
    """Normalises a dict, a list of (name, value) pairs or of Headers."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [item if type(item) is Header else Header(*item) for item in items]


class Fail(Exception):
    """Fails the message: return it or raise it from ``process``."""

    def __init__(self, reason):
        super().__init__(str(reason))
        self.reason = str(reason)

    def __repr__(self):
        return f"Fail({self.reason!r})"


_STR_HEADERS = {}  # (name, str value) → Header


class Output:
    """A message to emit. ``value`` and ``key`` accept bytes or str;
    ``headers`` a dict or a list of (name, value) pairs; ``route`` names the
    sinks that receive it (None: the default next hop)."""

    # An output made from a packed batch's message carries that message's
    # headers as batch entries (_inherit: Batch, first, count), read into
    # Headers only if ``headers`` is read; _headers follow them.
    __slots__ = ("key", "value", "_headers", "_inherit", "timestamp_ms", "route")

    def __init__(self, value=b"", *, key=None, headers=None, timestamp_ms=None, route=None):
        self.key = None if key is None else to_bytes(key, "key")
        self.value = to_bytes(value)
        self._headers = headers_list(headers)
        self._inherit = None
        self.timestamp_ms = timestamp_ms
        self.route = route

    @property
    def headers(self):
        """The headers, a list of :class:`Header` (edit it in place or assign another)."""
        if self._inherit is not None:
            self._headers[:0] = _read_headers(*self._inherit)
            self._inherit = None
        return self._headers

    @headers.setter
    def headers(self, headers):
        self._headers = headers
        self._inherit = None

    @classmethod
    def json(cls, value, **kwargs):
        """An output whose value is ``value`` encoded as compact JSON."""
        return cls(dumps(value), **kwargs)

    def with_value(self, value):
        self.value = to_bytes(value)
        return self

    def with_json(self, value):
        self.value = dumps(value)
        return self

    def with_key(self, key):
        self.key = None if key is None else to_bytes(key, "key")
        return self

    def with_route(self, route):
        self.route = route
        return self

    def with_header(self, name, value):
        """Sets header ``name``, replacing any header of that name."""
        if type(value) is str:
            # Most often a constant (a config value): build each one once.
            header = _STR_HEADERS.get((name, value))
            if header is None:
                if len(_STR_HEADERS) >= 1024:
                    _STR_HEADERS.clear()
                header = _STR_HEADERS[name, value] = Header(name, value)
        else:
            header = Header(name, value)
        headers = self._headers
        inherit = self._inherit
        # A name no header of the batch has needs no scan of the inherited ones.
        if inherit is not None and name.encode("utf-8") in inherit[0].header_names():
            if _find_header(*inherit, name) is not None:
                headers = self.headers  # an inherited header is replaced: read them all
        for h in headers:
            if h[0] == name:
                self._headers = [h for h in headers if h[0] != name]
                self._headers.append(header)
                return self
        headers.append(header)
        return self

    def header(self, name):
        """The value (bytes) of the first header called ``name``, or None."""
        if self._inherit is not None:
            value = _find_header(*self._inherit, name)
            if value is not None:
                return value
        for h in self._headers:
            if h[0] == name:
                return h[1]
        return None

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        fields = ("key", "value", "headers", "timestamp_ms", "route")
        return all(getattr(self, f) == getattr(other, f) for f in fields)

    __hash__ = None

    def __repr__(self):
        return (
            f"Output(value={self.value!r}, key={self.key!r}, headers={self.headers!r}, "
            f"timestamp_ms={self.timestamp_ms!r}, route={self.route!r})"
        )


# Message._s bits: a field already read (its slot holds it), and CHANGED for
# a message that is not, or no longer, exactly its batch entry.
_KEY, _VALUE, _HEADERS, _TS, _ORIGIN, CHANGED = 1, 2, 4, 8, 16, 32
_LOADED = _KEY | _VALUE | _HEADERS | _TS | _ORIGIN


def _read_headers(batch, first, count):
    """Entries ``first .. first + count`` of a batch's header table, as a new
    list of Headers."""
    buf = batch.buf
    at = batch.headers_off + 16 * first
    out = []
    # One unpack per entry costs less than four reads through the view.
    for at in range(at, at + 16 * count, 16):
        name_off, name_len, value_off, value_len = _HEADER_ENTRY.unpack_from(buf, at)
        name = buf[name_off : name_off + name_len].decode("utf-8")
        out.append(_tuple_new(Header, (name, buf[value_off : value_off + value_len])))
    return out


def _find_header(batch, first, count, name):
    """The value of the first of those entries called ``name``, or None.
    Compares the encoded name in place: no header is decoded."""
    if not count:
        return None
    hw = batch.headers
    buf = batch.buf
    wanted = name.encode("utf-8")
    size = len(wanted)
    for j in range(4 * first, 4 * (first + count), 4):
        if hw[j + 1] == size and buf.startswith(wanted, hw[j]):
            off = hw[j + 2]
            return buf[off : off + hw[j + 3]]
    return None


class Batch:
    """A packed batch as lazy messages read it: the buffer, u32 views of its
    message and header tables, and the header table's offset
    (docs/packed-abi.md)."""

    __slots__ = ("buf", "messages", "headers", "headers_off", "_names")

    def __init__(self, buf, messages, headers, headers_off):
        self.buf = buf
        self.messages = messages
        self.headers = headers
        self.headers_off = headers_off
        self._names = None

    def header_names(self):
        """The encoded names of every header in the batch, as a set."""
        if self._names is None:
            starts = self.headers[0::4]
            ends = map(_add, starts, self.headers[1::4])
            self._names = set(map(self.buf.__getitem__, map(slice, starts, ends)))
        return self._names


class Message:
    """One input message: ``key`` (bytes or None), ``value`` (bytes),
    ``headers`` (list of :class:`Header`), ``timestamp_ms`` (int or None) and
    ``origin`` (:class:`Origin` or None), plus the helpers below.

    Returning the message itself from ``process``, unmodified, forwards the
    input as it is (the packed world's ``keep``: nothing is copied back)."""

    # _b: the Batch (None for a message built in Python), _i: the index of
    # its first word in the message table, _s: the bits above, _snap: the
    # headers list as first read, to tell whether it was edited in place.
    __slots__ = ("_b", "_i", "_s", "_key", "_value", "_headers", "_snap", "_ts", "_origin")

    def __init__(self, key=None, value=b"", headers=None, timestamp_ms=None, origin=None):
        self._b = None
        self._s = _LOADED | CHANGED
        self._key = key
        self._value = value
        self._headers = [] if headers is None else headers
        self._ts = timestamp_ms
        self._origin = origin

    @property
    def key(self):
        if self._s & _KEY:
            return self._key
        self._s |= _KEY
        w = self._b.messages
        i = self._i
        if w[i] & 1:
            off = w[i + 1]
            self._key = key = self._b.buf[off : off + w[i + 2]]
            return key
        self._key = None
        return None

    @key.setter
    def key(self, key):
        self._key = key
        self._s |= _KEY | CHANGED

    @property
    def value(self):
        if self._s & _VALUE:
            return self._value
        self._s |= _VALUE
        w = self._b.messages
        off = w[self._i + 3]
        self._value = value = self._b.buf[off : off + w[self._i + 4]]
        return value

    @value.setter
    def value(self, value):
        self._value = value
        self._s |= _VALUE | CHANGED

    @property
    def headers(self):
        if not self._s & _HEADERS:
            self._s |= _HEADERS
            w = self._b.messages
            self._headers = _read_headers(self._b, w[self._i + 5], w[self._i + 6])
            self._snap = self._headers[:]
        return self._headers

    @headers.setter
    def headers(self, headers):
        self._headers = headers
        self._s |= _HEADERS | CHANGED

    @property
    def timestamp_ms(self):
        if self._s & _TS:
            return self._ts
        self._s |= _TS
        w = self._b.messages
        i = self._i
        self._ts = ts = w[i + 7] | w[i + 8] << 32 if w[i] & 2 else None
        return ts

    @timestamp_ms.setter
    def timestamp_ms(self, timestamp_ms):
        self._ts = timestamp_ms
        self._s |= _TS | CHANGED

    @property
    def origin(self):
        """Read-only for the host: origins on outputs are ignored."""
        if self._s & _ORIGIN:
            return self._origin
        self._s |= _ORIGIN
        w = self._b.messages
        i = self._i
        flags = w[i]
        origin = None
        if flags & 4:
            buf = self._b.buf
            off = w[i + 9]
            name = buf[off : off + w[i + 10]].decode("utf-8")
            partition = w[i + 11] if flags & 8 else None
            offset = w[i + 12] | w[i + 13] << 32 if flags & 16 else None
            id_ = None
            if flags & 32:
                off = w[i + 14]
                id_ = buf[off : off + w[i + 15]].decode("utf-8")
            origin = Origin(name, partition, offset, id_)
        self._origin = origin
        return origin

    @origin.setter
    def origin(self, origin):
        self._origin = origin
        self._s |= _ORIGIN

    def unchanged(self):
        """True while the message is exactly its batch entry."""
        s = self._s
        return not s & CHANGED and (not s & _HEADERS or self._headers == self._snap)

    @property
    def text(self):
        """The value as UTF-8 text (raises on invalid UTF-8)."""
        return self.value.decode("utf-8")

    @property
    def key_text(self):
        """The key as UTF-8 text, or None without a key."""
        key = self.key
        return None if key is None else key.decode("utf-8")

    def json(self):
        """The value parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return _loads(self.value)

    def header(self, name):
        """The value (bytes) of the first header called ``name``, or None."""
        if self._s & _HEADERS:
            for h in self._headers:
                if h[0] == name:
                    return h[1]
            return None
        w = self._b.messages
        return _find_header(self._b, w[self._i + 5], w[self._i + 6], name)

    def header_text(self, name):
        value = self.header(name)
        return None if value is None else value.decode("utf-8")

    @property
    def header_dict(self):
        """The headers as a dict of name to bytes (the last one wins)."""
        if self._s & _HEADERS:
            return dict(self._headers)
        w = self._b.messages
        return dict(_read_headers(self._b, w[self._i + 5], w[self._i + 6]))

    def output(self, value=None, *, key=..., headers=..., timestamp_ms=..., route=None):
        """An output that keeps this message's key, headers and timestamp,
        with any of them (and the value) replaced."""
        return self._output(value, key, headers, timestamp_ms, route)

    def with_json(self, value, *, key=..., headers=..., timestamp_ms=..., route=None):
        """An output with this message's metadata and ``value`` as JSON."""
        return self._output(dumps(value), key, headers, timestamp_ms, route)

    def with_route(self, route):
        """This message, unchanged, bound for ``route``."""
        return self._output(None, ..., ..., ..., route)

    def _output(self, value, key, headers, timestamp_ms, route):
        out = _new(Output)
        if value is None:
            value = self.value
        elif type(value) is not bytes:
            value = to_bytes(value)
        out.value = value
        if key is ...:
            key = self.key
        elif type(key) is str:
            key = key.encode("utf-8")
        elif key is not None:
            key = to_bytes(key, "key")
        out.key = key
        out._inherit = None
        if headers is not ...:
            out._headers = headers_list(headers)
        elif self._s & _HEADERS:
            out._headers = list(self._headers)
        else:
            # Unread headers go along as batch entries, copied as bytes.
            out._headers = []
            w = self._b.messages
            if w[self._i + 6]:
                out._inherit = (self._b, w[self._i + 5], w[self._i + 6])
        out.timestamp_ms = self.timestamp_ms if timestamp_ms is ... else timestamp_ms
        out.route = route
        return out

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        return (self.key, self.value, self.headers, self.timestamp_ms, self.origin) == (
            other.key,
            other.value,
            other.headers,
            other.timestamp_ms,
            other.origin,
        )

    __hash__ = None

    def __repr__(self):
        return (
            f"Message(key={self.key!r}, value={self.value!r}, headers={self.headers!r}, "
            f"timestamp_ms={self.timestamp_ms!r}, origin={self.origin!r})"
        )


def lazy_messages(batch, count):
    """The ``count`` messages of a packed batch, each read on demand."""
    messages = []
    append = messages.append
    for i in range(0, 16 * count, 16):
        m = _new(Message)
        m._b = batch
        m._i = i
        m._s = 0
        append(m)
    return messages


KEEP = object()
"""The outcome of a message returned unchanged: forward the input as it is."""


def reason(exc):
    if isinstance(exc, Fail):
        return exc.reason
    text = str(exc)
    return text if text else type(exc).__name__


def _one(message, result):
    if isinstance(result, Output):
        return result
    if isinstance(result, (bytes, str, bytearray, memoryview)):
        return message.output(result)
    if isinstance(result, Message):
        return result.output()
    raise TypeError(
        f"process returned {type(result).__name__}: return an Output, bytes, str, "
        "a list of them, None or Fail"
    )


def outcome(message, result):
    """What ``process`` returned for ``message``, as KEEP, a list of
    Outputs (emit; empty drops) or a str (the reason it failed)."""
    if result is message:
        return KEEP if message.unchanged() else [message.output()]
    if result is None:
        return []
    if isinstance(result, Output):
        return [result]
    if isinstance(result, Fail):
        return result.reason
    if isinstance(result, (list, tuple)) or hasattr(result, "__next__"):
        outputs = []
        for item in result:
            if isinstance(item, Fail):
                return item.reason
            if item is not None:
                outputs.append(_one(message, item))
        return outputs
    return [_one(message, result)]


def run(instance, messages, report):
    """Runs the processor over ``messages``: one outcome (see
    :func:`outcome`) per message. ``report(exc)`` is called with the first
    unexpected exception of the batch (a Fail is expected)."""
    process_batch = getattr(instance, "process_batch", None)
    if process_batch is not None:
        return _run_batch(process_batch, list(messages), report)
    process = instance.process
    plan = []
    append = plan.append
    reported = False
    for m in messages:
        try:
            r = process(m)
            # The two commonest paths inlined: outcome() decides the rest.
            if r is m and not m._s & (CHANGED | _HEADERS):
                append(KEEP)
            elif type(r) is Output:
                append([r])
            else:
                append(outcome(m, r))
        except Exception as exc:
            if not reported and not isinstance(exc, Fail):
                reported = True
                report(exc)
            append(reason(exc))
    return plan


def _run_batch(process_batch, messages, report):
    try:
        results = list(process_batch(messages))
    except Exception as exc:
        if not isinstance(exc, Fail):
            report(exc)
        return [reason(exc)] * len(messages)
    if len(results) != len(messages):
        return [f"process_batch returned {len(results)} outcomes for {len(messages)} messages"] * len(messages)
    plan = []
    for m, r in zip(messages, results):
        try:
            plan.append(outcome(m, r))
        except Exception as exc:
            plan.append(reason(exc))
    return plan


def check_output(out):
    """Brings an output's fields to the exact types both worlds encode
    (bytes, a list of Headers) or raises naming the first invalid one."""
    out.value = to_bytes(out.value)
    if out.key is not None:
        out.key = to_bytes(out.key, "key")
    headers = out.headers
    if type(headers) is tuple:
        out.headers = headers = list(headers)
    elif type(headers) is not list:
        raise TypeError(f"headers must be a list, not {type(headers).__name__}")
    for k, h in enumerate(headers):
        if type(h) is not Header:
            headers[k] = h = Header(*h)
        h.name.encode("utf-8")
    ts = out.timestamp_ms
    if ts is not None and (not isinstance(ts, int) or not 0 <= ts < 1 << 64):
        raise ValueError(f"timestamp_ms must be an int in 0..2^64, not {ts!r}")
    route = out.route
    if route is not None:
        if type(route) is not str:
            raise TypeError(f"route must be a str, not {type(route).__name__}")
        route.encode("utf-8")
