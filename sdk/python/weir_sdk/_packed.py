"""The packed batch ABI, version 1 (docs/packed-abi.md): reads a batch,
runs the processor, writes the reply.

Pure Python (no ``wit_world`` import), so it runs under plain CPython too.
The batch's tables are read through ``memoryview.cast("I")`` and the
outcome table written as an ``array("I")``, both in native order: the
layout is little-endian, as wasm32 is.
"""

import struct as _struct
from array import array as _array

from ._message import KEEP, Batch, check_output, lazy_messages, run

BATCH_MAGIC = 0x424B5057  # "WPKB"
REPLY_MAGIC = 0x524B5057  # "WPKR"
VERSION = 1
_BATCH_HEADER = _struct.Struct("<8I")
_REPLY_HEADER = _struct.Struct("<12I")


def open_batch(buf):
    """The batch's messages, read lazily: (Batch, count)."""
    if len(buf) < _BATCH_HEADER.size:
        raise ValueError(f"packed batch: {len(buf)} bytes is shorter than its header")
    magic, version, count, header_count, messages_off, headers_off, total, _ = _BATCH_HEADER.unpack_from(buf)
    if magic != BATCH_MAGIC:
        raise ValueError("packed batch: bad magic")
    if version != VERSION:
        raise ValueError(f"packed batch version {version}: this weir_sdk reads version {VERSION}")
    if total != len(buf):
        raise ValueError(f"packed batch: total_len {total} but {len(buf)} bytes")
    view = memoryview(buf)
    messages = view[messages_off : messages_off + 64 * count].cast("I")
    headers = view[headers_off : headers_off + 16 * header_count].cast("I")
    if len(messages) != 16 * count or len(headers) != 4 * header_count:
        raise ValueError("packed batch: a table does not fit in the buffer")
    return Batch(buf, messages, headers, headers_off), count


def process(instance, buf, report):
    """Runs the processor ``instance`` over the packed batch ``buf``;
    returns the packed reply. ``report`` as in :func:`_message.run`."""
    batch, count = open_batch(buf)
    return encode(run(instance, lazy_messages(batch, count), report))


def fail_all(buf, reason):
    """A reply that fails every message of the batch ``buf`` with ``reason``."""
    return encode([reason] * open_batch(buf)[1])


def encode(plan):
    """The reply for ``plan``, one outcome per input (see _message.outcome).

    Outputs are not checked one by one on the way: when the reply cannot be
    written, every output is brought to exact types (str to bytes, pairs to
    Headers) or its message fails, and the reply is written again."""
    try:
        return _encode(plan)
    except (TypeError, ValueError, AttributeError, _struct.error):
        pass
    for i, item in enumerate(plan):
        if type(item) is list:
            try:
                for out in item:
                    check_output(out)
            except Exception as exc:
                plan[i] = f"invalid output: {exc}"
    return _encode(plan)


_OUTPUT = _struct.Struct("<12I")
_HEADER = _struct.Struct("<4I")
_ROUTE = _struct.Struct("<2I")


def _encode(plan):
    # The data area comes first, after the header, so every offset is final
    # when its bytes are appended; table entries are packed as they come
    # (one struct call per entry: int conversions are what cost, in wasm
    # most of all) and appended after the data.
    data = bytearray(_REPLY_HEADER.size)
    outcomes = _array("I", bytes(16 * len(plan)))
    outputs = []
    headers = []
    routes = {}  # name → index in the route table
    route_entries = []
    header_entries = {}  # Header → its entry: equal headers share their bytes
    first = 0
    for i, item in enumerate(plan):
        if item is KEEP:
            outcomes[4 * i] = 1
        elif type(item) is list:
            outcomes[4 * i + 1] = first
            outcomes[4 * i + 2] = len(item)
            first += len(item)
            for out in item:
                key = out.key
                if key is None:
                    flags = key_off = key_len = 0
                else:
                    flags = 1
                    key_off = len(data)
                    data += key
                    key_len = len(data) - key_off
                value_off = len(data)
                data += out.value
                value_len = len(data) - value_off
                headers_first = len(headers)
                if out._inherit is not None:
                    # The input's headers, copied from the batch as they are.
                    batch, first_header, header_count = out._inherit
                    src = batch.buf
                    at = batch.headers_off + 16 * first_header
                    for at in range(at, at + 16 * header_count, 16):
                        h_name, h_name_len, h_value, h_value_len = _HEADER.unpack_from(src, at)
                        pos = len(data)
                        if h_value == h_name + h_name_len:  # as the host writes them: one copy
                            data += src[h_name : h_value + h_value_len]
                        else:
                            data += src[h_name : h_name + h_name_len]
                            data += src[h_value : h_value + h_value_len]
                        headers.append(_HEADER.pack(pos, h_name_len, pos + h_name_len, h_value_len))
                for h in out._headers:
                    entry = header_entries.get(h)
                    if entry is None:
                        name, value = h
                        name = name.encode("utf-8")
                        at = len(data)
                        data += name
                        value_at = len(data)
                        data += value
                        entry = header_entries[h] = _HEADER.pack(at, len(name), value_at, len(data) - value_at)
                    headers.append(entry)
                ts = out.timestamp_ms
                if ts is None:
                    ts = 0
                else:
                    flags |= 2
                route = out.route
                if route is None:
                    route = 0
                else:
                    flags |= 4
                    index = routes.get(route)
                    if index is None:
                        name = route.encode("utf-8")
                        index = routes[route] = len(routes)
                        route_entries.append(_ROUTE.pack(len(data), len(name)))
                        data += name
                    route = index
                # A timestamp < 0 or ≥ 2^64 makes pack() raise.
                outputs.append(
                    _OUTPUT.pack(
                        flags,
                        key_off,
                        key_len,
                        value_off,
                        value_len,
                        headers_first,
                        len(headers) - headers_first,
                        ts & 0xFFFFFFFF,
                        ts >> 32,
                        route,
                        0,
                        0,
                    )
                )
        else:
            reason = item.encode("utf-8", "replace")
            outcomes[4 * i] = 2
            outcomes[4 * i + 1] = len(data)
            outcomes[4 * i + 2] = len(reason)
            data += reason

    data += bytes(-len(data) % 8)  # tables start at a multiple of 8
    outcomes_off = len(data)
    outputs_off = outcomes_off + 16 * len(plan)
    headers_off = outputs_off + 48 * len(outputs)
    routes_off = headers_off + 16 * len(headers)
    _REPLY_HEADER.pack_into(
        data,
        0,
        REPLY_MAGIC,
        VERSION,
        len(plan),
        len(outputs),
        len(headers),
        len(routes),
        outcomes_off,
        outputs_off,
        headers_off,
        routes_off,
        routes_off + 8 * len(routes),
        0,
    )
    return b"".join((data, outcomes, b"".join(outputs), b"".join(headers), b"".join(route_entries)))
