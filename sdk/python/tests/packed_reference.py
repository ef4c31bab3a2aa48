"""A reference of the packed ABI (docs/packed-abi.md), written from the doc
alone with struct, independent of weir_sdk: a batch encoder as the host
writes batches, and a reply decoder that checks everything the doc says
the host checks, and a little more (spans stay out of the tables).
"""

import struct

BATCH_MAGIC = 0x424B5057
REPLY_MAGIC = 0x524B5057


class Msg:
    """One input message for :func:`encode_batch`."""

    def __init__(self, value=b"", key=None, headers=(), timestamp_ms=None, origin=None):
        self.value = value
        self.key = key
        self.headers = list(headers)
        self.timestamp_ms = timestamp_ms
        # (name, partition or None, offset or None, id or None)
        self.origin = origin


def _align8(n):
    return (n + 7) & ~7


def encode_batch(messages, data_first=False, shared_names=False):
    """A batch as the host writes it. ``data_first`` puts the data area
    before the tables (readers must follow the offsets, not assume an
    order); origin names are written once and shared, as the host does,
    and so are header names with ``shared_names`` (then a name's bytes are
    not next to its value's)."""
    data = bytearray()
    shared = {}

    def span(b):
        off = len(data)
        data.extend(b)
        return off, len(b)

    def shared_span(b):
        if b not in shared:
            shared[b] = span(b)
        return shared[b]

    entries, header_entries = [], []
    for m in messages:
        flags = 0
        key = (0, 0)
        if m.key is not None:
            flags |= 1
            key = span(m.key)
        value = span(m.value)
        first = len(header_entries)
        for name, hv in m.headers:
            name_span = shared_span(name.encode()) if shared_names else span(name.encode())
            header_entries.append(name_span + span(hv))
        ts = (0, 0)
        if m.timestamp_ms is not None:
            flags |= 2
            ts = (m.timestamp_ms & 0xFFFFFFFF, m.timestamp_ms >> 32)
        oname, partition, offset, oid = (0, 0), 0, (0, 0), (0, 0)
        if m.origin is not None:
            name, p, o, i = m.origin
            flags |= 4
            oname = shared_span(name.encode())
            if p is not None:
                flags |= 8
                partition = p
            if o is not None:
                flags |= 16
                offset = (o & 0xFFFFFFFF, o >> 32)
            if i is not None:
                flags |= 32
                oid = span(i.encode())
        entries.append(
            [flags, *key, *value, first, len(m.headers), *ts, *oname, partition, *offset, *oid]
        )

    count, header_count = len(entries), len(header_entries)
    if data_first:
        data_off = 32
        messages_off = _align8(data_off + len(data))
    else:
        messages_off = 32
        data_off = None
    headers_off = messages_off + 64 * count
    if data_off is None:
        data_off = headers_off + 16 * header_count
        total = data_off + len(data)
    else:
        total = headers_off + 16 * header_count

    def rebase(words, spans):
        for w in spans:
            words[w] += data_off

    buf = bytearray(total)
    for n, e in enumerate(entries):
        flags = e[0]
        spans = [3]
        if flags & 1:
            spans.append(1)
        if flags & 4:
            spans.append(9)
        if flags & 32:
            spans.append(14)
        rebase(e, spans)
        struct.pack_into("<16I", buf, messages_off + 64 * n, *e)
    for n, (noff, nlen, voff, vlen) in enumerate(header_entries):
        struct.pack_into("<4I", buf, headers_off + 16 * n, noff + data_off, nlen, voff + data_off, vlen)
    buf[data_off : data_off + len(data)] = data
    struct.pack_into("<8I", buf, 0, BATCH_MAGIC, 1, count, header_count, messages_off, headers_off, total, 0)
    return bytes(buf)


class ReplyError(AssertionError):
    """The reply breaks the layout."""


def _check(cond, what):
    if not cond:
        raise ReplyError(what)


def decode_reply(reply, batch_count):
    """The reply's outcomes, one per input: ("keep",), ("fail", reason) or
    ("emit", [dict(key, value, headers, timestamp_ms, route)]). Raises
    ReplyError for anything the host would refuse."""
    _check(type(reply) is bytes, f"the reply must be bytes, not {type(reply).__name__}")
    _check(len(reply) >= 48, "shorter than the reply header")
    (magic, version, outcome_count, output_count, header_count, route_count, outcomes_off, outputs_off,
     headers_off, routes_off, total, reserved) = struct.unpack_from("<12I", reply)
    _check(magic == REPLY_MAGIC, "bad magic")
    _check(version == 1, "unknown version")
    _check(total == len(reply), f"total_len {total} but {len(reply)} bytes")
    _check(reserved == 0, "reserved header word")
    _check(outcome_count == batch_count, f"{outcome_count} outcomes for {batch_count} messages")
    # Tables may come in any order; each starts at a multiple of 8, fits,
    # and overlaps neither the header nor another table.
    tables = [(outcomes_off, 16 * outcome_count), (outputs_off, 48 * output_count),
              (headers_off, 16 * header_count), (routes_off, 8 * route_count)]
    for off, size in tables:
        _check(off % 8 == 0, f"table at {off} is not 8-aligned")
        _check(48 <= off and off + size <= total, f"table at {off} does not fit")
    used = sorted((off, off + size) for off, size in tables if size)
    _check(all(a[1] <= b[0] for a, b in zip(used, used[1:])), "tables overlap")

    def in_data(off, length):
        end = off + length
        return 48 <= off and end <= total and all(end <= a or off >= b for a, b in used)

    def text(off, length, what):
        _check(in_data(off, length), f"{what} span outside the data area")
        try:
            return reply[off : off + length].decode("utf-8")
        except UnicodeDecodeError:
            raise ReplyError(f"{what} is not UTF-8") from None

    def raw(off, length, what):
        _check(in_data(off, length), f"{what} span outside the data area")
        return reply[off : off + length]

    routes = []
    for r in range(route_count):
        routes.append(text(*struct.unpack_from("<2I", reply, routes_off + 8 * r), "route name"))
    _check(len(set(routes)) == len(routes), f"route names repeat: {routes}")

    headers = []
    for h in range(header_count):
        noff, nlen, voff, vlen = struct.unpack_from("<4I", reply, headers_off + 16 * h)
        headers.append((text(noff, nlen, "header name"), raw(voff, vlen, "header value")))

    outputs = []
    next_header = 0
    for o in range(output_count):
        w = struct.unpack_from("<12I", reply, outputs_off + 48 * o)
        flags = w[0]
        _check(flags & ~7 == 0, "unknown output flag bits")
        _check(w[10] == 0 and w[11] == 0, "reserved output words")
        key = raw(w[1], w[2], "key") if flags & 1 else None
        if not flags & 1:
            _check(w[1] == 0 and w[2] == 0, "a span without its flag")
        first, n = w[5], w[6]
        _check(first == next_header, "header ranges out of order or with gaps")
        next_header += n
        _check(next_header <= header_count, "header range outside the table")
        ts = w[7] | w[8] << 32 if flags & 2 else None
        if not flags & 2:
            _check(w[7] == 0 and w[8] == 0, "a timestamp without its flag")
        route = None
        if flags & 4:
            _check(w[9] < route_count, "route index outside the route table")
            route = routes[w[9]]
        else:
            _check(w[9] == 0, "a route index without its flag")
        outputs.append(
            dict(key=key, value=raw(w[3], w[4], "value"), headers=headers[first : first + n],
                 timestamp_ms=ts, route=route)
        )
    _check(next_header == header_count, "header ranges do not add up")

    outcomes = []
    next_output = 0
    used_routes = set()
    for i in range(outcome_count):
        kind, a, b, reserved = struct.unpack_from("<4I", reply, outcomes_off + 16 * i)
        _check(reserved == 0, "reserved outcome word")
        if kind == 0:
            _check(a == next_output, "emit ranges out of order or with gaps")
            next_output += b
            _check(next_output <= output_count, "emit range outside the table")
            outcomes.append(("emit", outputs[a : a + b]))
            used_routes.update(o["route"] for o in outputs[a : a + b] if o["route"] is not None)
        elif kind == 1:
            _check(a == 0 and b == 0, "keep with non-zero words")
            outcomes.append(("keep",))
        elif kind == 2:
            outcomes.append(("fail", text(a, b, "reason")))
        else:
            raise ReplyError(f"unknown outcome kind {kind}")
    _check(next_output == output_count, "emit ranges do not add up")
    _check(used_routes == set(routes), "a route name no output uses")
    return outcomes
