"""The Python SDK's packed codec under plain CPython.

Batches are written by a reference encoder (packed_reference.py, from
docs/packed-abi.md), run through weir_sdk's processing, and the replies
decoded and checked as the host checks them.

    python3 -m unittest discover -s sdk/python/tests
"""

import json
import sys
from array import array
import types
import unittest
import unittest.mock
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# weir_sdk/__init__.py needs componentize-py's generated bindings; the codec
# does not: load the package's modules without running its __init__.
_package = types.ModuleType("weir_sdk")
_package.__path__ = [str(HERE.parent / "weir_sdk")]
sys.modules.setdefault("weir_sdk", _package)

from packed_reference import Msg, decode_reply, encode_batch  # noqa: E402
from weir_sdk import _message, _packed  # noqa: E402
from weir_sdk._message import Fail, Header, Message, Origin, Output  # noqa: E402


class Proc:
    """A processor from a function of the message."""

    def __init__(self, fn):
        self.process = fn


def run(fn, messages, **kwargs):
    """Runs ``fn`` as a processor over ``messages``; returns the decoded
    outcomes and the exceptions reported."""
    reported = []
    batch = encode_batch(messages, **kwargs)
    reply = _packed.process(Proc(fn), batch, reported.append)
    return decode_reply(reply, len(messages)), reported


def emit(value, key=None, headers=(), timestamp_ms=None, route=None):
    return dict(key=key, value=value, headers=list(headers), timestamp_ms=timestamp_ms, route=route)


class Reading(unittest.TestCase):
    def read(self, messages, **kwargs):
        seen = []

        def fn(m):
            seen.append(
                (m.key, m.value, [(h.name, h.value) for h in m.headers], m.timestamp_ms, m.origin)
            )
            return m

        outcomes, _ = run(fn, messages, **kwargs)
        self.assertEqual(outcomes, [("keep",)] * len(messages))
        return seen

    def test_fields_round_trip(self):
        messages = [
            Msg(b"v1", key=b"k1", headers=[("a", b"1")], timestamp_ms=1700000000123,
                origin=("orders", 3, 42, "1-0")),
            Msg(b"", key=None),
            Msg(b"\x00\xff binary", key=b"\xfe", headers=[("h\u00e9", b"\x00")]),
        ]
        for data_first in (False, True):
            seen = self.read(messages, data_first=data_first)
            self.assertEqual(seen[0], (b"k1", b"v1", [("a", b"1")], 1700000000123, Origin("orders", 3, 42, "1-0")))
            self.assertEqual(seen[1], (None, b"", [], None, None))
            self.assertEqual(seen[2], (b"\xfe", b"\x00\xff binary", [("h\u00e9", b"\x00")], None, None))

    def test_no_key_and_empty_key_differ(self):
        seen = self.read([Msg(b"x", key=None), Msg(b"x", key=b"")])
        self.assertIsNone(seen[0][0])
        self.assertEqual(seen[1][0], b"")

    def test_timestamps_and_offsets_above_2_32(self):
        big = [2**32, 2**40 + 5, 2**64 - 1]
        seen = self.read([Msg(b"", timestamp_ms=t, origin=("t", None, t, None)) for t in big])
        self.assertEqual([s[3] for s in seen], big)
        self.assertEqual([s[4] for s in seen], [Origin("t", None, t, None) for t in big])

    def test_origin_fields_are_optional(self):
        seen = self.read([Msg(b"", origin=("file.ndjson", None, None, None)), Msg(b"", origin=("s", 0, None, "7-1"))])
        self.assertEqual(seen[0][4], Origin("file.ndjson", None, None, None))
        self.assertEqual(seen[1][4], Origin("s", 0, None, "7-1"))

    def test_duplicate_header_names_keep_their_order(self):
        headers = [("a", b"1"), ("b", b"2"), ("a", b"3")]
        looked = []

        def fn(m):
            looked.append((m.header("a"), m.header("b"), m.header("c"), m.header_text("a")))
            looked.append((m.header_dict, m.headers))
            looked.append((m.header("a"), m.header("zz")))  # after the list was read
            return m.output()

        outcomes, _ = run(fn, [Msg(b"v", headers=headers)], shared_names=True)
        self.assertEqual(looked[0], (b"1", b"2", None, "1"))
        self.assertEqual(looked[1], ({"a": b"3", "b": b"2"}, [Header(*h) for h in headers]))
        self.assertEqual(looked[2], (b"1", None))
        self.assertEqual(outcomes, [("emit", [emit(b"v", headers=headers)])])

    def test_helpers(self):
        out = []

        def fn(m):
            out.append((m.text, m.key_text, m.json()))
            return None

        run(fn, [Msg('{"a": "\u00e9"}'.encode(), key=b"k")])
        self.assertEqual(out, [('{"a": "\u00e9"}', "k", {"a": "\u00e9"})])

    def test_json_reads_what_json_loads_reads(self):
        values = [b'{"a":1}', b'[1]', b' {"a":1}', '{"a":1}'.encode("utf-16"), b'\xef\xbb\xbf{"a":1}',
                  b'{', b'', b'"s"', b'1', b'{"a":1} \n', b'{"a":1} x', b'[1]]', b'{}', b'[]', b'{"a":[1,{"b":null}]}',
                  b'[\xff]', b'{"\xc3\xa9":"\xe2\x82\xac"}', b'[NaN]', b'[1,]']
        for value in values:
            msg = Message(value=value)
            try:
                expected = ("ok", json.loads(value))
            except ValueError as exc:
                expected = ("error", type(exc), str(exc))
            try:
                actual = ("ok", msg.json())
            except ValueError as exc:
                actual = ("error", type(exc), str(exc))
            self.assertEqual(actual, expected, value)

    def test_json_writes_what_json_dumps_writes(self):
        values = [{"a": [1, 2.5, None, True]}, "\u00e9\n", [float("nan")], {1: "k"}, [], 3]
        for value in values:
            expected = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
            self.assertEqual(Output.json(value).value, expected)
        cycle = []
        cycle.append(cycle)
        with self.assertRaisesRegex(ValueError, "Circular reference"):
            Output.json(cycle)
        with self.assertRaisesRegex(TypeError, "not JSON serializable"):
            Output.json({"a": object()})
        self.assertEqual(Output.json([cycle[0:0], 1]).value, b"[[],1]", "an error leaves no stale state")
        with unittest.mock.patch.object(_message, "_C_ENCODER", None):  # a CPython without _json
            self.assertEqual(Output.json(values[0]).value, b'{"a":[1,2.5,null,true]}')


class Outcomes(unittest.TestCase):
    def test_keep_unless_changed(self):
        def fn(m):
            action = m.value
            # Reading any field, or headers, keeps the message as it is.
            m.key, m.headers, m.timestamp_ms, m.origin, m.header("a")  # noqa: B018
            if action == b"set value":
                m.value = b"new"
            elif action == b"append header":
                m.headers.append(Header("b", "2"))
            elif action == b"set timestamp":
                m.timestamp_ms = 7
            elif action == b"set key":
                m.key = None
            return m

        messages = [Msg(a, key=b"k", headers=[("a", b"1")], timestamp_ms=5)
                    for a in (b"read", b"set value", b"append header", b"set timestamp", b"set key")]
        outcomes, _ = run(fn, messages)
        self.assertEqual(
            outcomes,
            [
                ("keep",),
                ("emit", [emit(b"new", key=b"k", headers=[("a", b"1")], timestamp_ms=5)]),
                ("emit", [emit(b"append header", key=b"k", headers=[("a", b"1"), ("b", b"2")], timestamp_ms=5)]),
                ("emit", [emit(b"set timestamp", key=b"k", headers=[("a", b"1")], timestamp_ms=7)]),
                ("emit", [emit(b"set key", key=None, headers=[("a", b"1")], timestamp_ms=5)]),
            ],
        )

    def test_every_kind_of_return(self):
        def fn(m):
            v = m.value
            if v == b"none":
                return None
            if v == b"empty":
                return []
            if v == b"bytes":
                return b"B"
            if v == b"str":
                return "S\u00e9"
            if v == b"output":
                return Output("o", key="k2", headers={"x": "1"}, timestamp_ms=9, route="alerts")
            if v == b"many":
                return [m.with_route("audit"), None, "two", m.with_json({"a": [1, "\u00e9"]})]
            if v == b"generator":
                return (m.output(str(i)) for i in range(2))
            if v == b"fail":
                return Fail("nope")
            if v == b"raise fail":
                raise Fail("raised")
            if v == b"fail in list":
                return [m, Fail("listed")]
            if v == b"other message":
                return Message(b"mk", b"mv", [Header("h", b"v")], 3)
            if v == b"with header":
                return m.output().with_header("a", "replaced").with_header("c", b"new")
            raise AssertionError(v)

        kinds = [b"none", b"empty", b"bytes", b"str", b"output", b"many", b"generator", b"fail",
                 b"raise fail", b"fail in list", b"other message", b"with header"]
        messages = [Msg(k, key=b"k", headers=[("a", b"1"), ("b", b"2"), ("a", b"3")], timestamp_ms=1) for k in kinds]
        outcomes, reported = run(fn, messages)
        meta = dict(key=b"k", headers=[("a", b"1"), ("b", b"2"), ("a", b"3")], timestamp_ms=1)
        self.assertEqual(
            outcomes,
            [
                ("emit", []),
                ("emit", []),
                ("emit", [emit(b"B", **meta)]),
                ("emit", [emit("S\u00e9".encode(), **meta)]),
                ("emit", [emit(b"o", key=b"k2", headers=[("x", b"1")], timestamp_ms=9, route="alerts")]),
                ("emit", [emit(b"many", route="audit", **meta), emit(b"two", **meta),
                          emit('{"a":[1,"\u00e9"]}'.encode(), **meta)]),
                ("emit", [emit(b"0", **meta), emit(b"1", **meta)]),
                ("fail", "nope"),
                ("fail", "raised"),
                ("fail", "listed"),
                ("emit", [emit(b"mv", key=b"mk", headers=[("h", b"v")], timestamp_ms=3)]),
                ("emit", [emit(b"with header", key=b"k", headers=[("b", b"2"), ("a", b"replaced"), ("c", b"new")],
                               timestamp_ms=1)]),
            ],
        )
        self.assertEqual(reported, [], "a Fail is not an unexpected exception")

    def test_exceptions_fail_their_message_and_the_first_is_reported(self):
        def fn(m):
            if m.value == b"ok":
                return m
            if m.value == b"empty":
                raise ValueError()
            raise ValueError(m.text)

        outcomes, reported = run(fn, [Msg(b"boom"), Msg(b"ok"), Msg(b"empty"), Msg(b"again")])
        self.assertEqual(outcomes, [("fail", "boom"), ("keep",), ("fail", "ValueError"), ("fail", "again")])
        self.assertEqual([str(e) for e in reported], ["boom"])

    def test_invalid_returns_fail_only_their_message(self):
        def bad_value(m):
            out = m.output()
            out.value = 42
            return out

        def str_value(m):
            out = m.output()
            out.value = "text"  # coerced, as Output("text") would
            return out

        def negative_ts(m):
            return Output("x", timestamp_ms=-1)

        def huge_ts(m):
            return Output("x", timestamp_ms=2**64)

        def float_ts(m):
            return Output("x", timestamp_ms=1.5)

        def bad_route(m):
            return Output("x", route=7)

        def bad_header(m):
            out = Output("x")
            out.headers.append(("n", 3))
            return out

        def pair_header(m):
            out = Output("x")
            out.headers = [("n", "v")]
            return out

        def tuple_headers(m):
            out = Output("x")
            out.headers = (Header("n", b"v"),)
            return out

        def wide_value(m):
            out = Output("x")
            out.value = memoryview(array("I", [1, 2]))  # len() 2, 8 bytes
            return out

        def not_headers(m):
            out = Output("x")
            out.headers = 5
            return out

        cases = {
            "int": (lambda m: 42, "fail",
                    "process returned int: return an Output, bytes, str, a list of them, None or Fail"),
            "int in list": (lambda m: [m.output(), 42], "fail", "process returned int"),
            "dict": (lambda m: {"a": 1}, "fail", "process returned dict"),
            "bad value": (bad_value, "fail", "invalid output: value must be bytes or str, not int"),
            "str value": (str_value, "emit", [emit(b"text")]),
            "negative ts": (negative_ts, "fail", "invalid output: timestamp_ms must be an int in 0..2^64, not -1"),
            "huge ts": (huge_ts, "fail", "invalid output: timestamp_ms must be an int"),
            "float ts": (float_ts, "fail", "invalid output: timestamp_ms must be an int"),
            "bad route": (bad_route, "fail", "invalid output: route must be a str, not int"),
            "bad header": (bad_header, "fail", "invalid output: header value must be bytes or str, not int"),
            "pair header": (pair_header, "emit", [emit(b"x", headers=[("n", b"v")])]),
            "tuple headers": (tuple_headers, "emit", [emit(b"x", headers=[("n", b"v")])]),
            "wide value": (wide_value, "emit", [emit(array("I", [1, 2]).tobytes())]),
            "not headers": (not_headers, "fail", "invalid output: headers must be a list, not int"),
        }
        for name, (fn, kind, expected) in cases.items():
            with self.subTest(name):
                def wrapped(m, fn=fn):
                    if m.value == b"bad":
                        return fn(m)
                    return [m.with_route("r"), m.output("2")]

                outcomes, _ = run(wrapped, [Msg(b"a"), Msg(b"bad"), Msg(b"b")])
                good = lambda v: ("emit", [emit(v, route="r"), emit(b"2")])  # noqa: E731
                self.assertEqual(outcomes[0], good(b"a"))
                self.assertEqual(outcomes[2], good(b"b"))
                self.assertEqual(outcomes[1][0], kind)
                if kind == "fail":
                    self.assertTrue(outcomes[1][1].startswith(expected), outcomes[1][1])
                else:
                    self.assertEqual(outcomes[1], ("emit", expected))

    def test_routes_are_written_once(self):
        def fn(m):
            return [m.with_route("alerts"), m.with_route("audit"), m.output(), m.with_route("alerts")]

        batch = encode_batch([Msg(b"1"), Msg(b"2")])
        reply = _packed.process(Proc(fn), batch, print)
        outcomes = decode_reply(reply, 2)
        for _, outputs in outcomes:
            self.assertEqual([o["route"] for o in outputs], ["alerts", "audit", None, "alerts"])
        self.assertEqual(int.from_bytes(reply[20:24], "little"), 2, "route_count")

    def test_outputs_carry_the_inputs_headers(self):
        seen = []

        def fn(m):
            kept = m.output().with_header("c", "3")  # inherited headers stay unread
            seen.append((kept.header("a"), kept.header("c"), kept.header("zz")))
            read = m.output().with_header("c", "3")
            seen.append(list(read.headers))
            read.headers.append(Header("d", b"4"))
            replaced = m.with_route("r")
            replaced.headers = [Header("only", b"x")]
            return [kept, read, replaced]

        inherited = [("a", b"1"), ("b", b"2"), ("a", b"3")]
        for shared_names in (False, True):
            seen.clear()
            outcomes, _ = run(fn, [Msg(b"v", headers=inherited)] * 2, shared_names=shared_names)
            self.assertEqual(seen[0], (b"1", b"3", None))
            self.assertEqual(seen[1], [Header(*h) for h in inherited + [("c", b"3")]])
            self.assertEqual(
                outcomes,
                [("emit", [emit(b"v", headers=inherited + [("c", b"3")]),
                           emit(b"v", headers=inherited + [("c", b"3"), ("d", b"4")]),
                           emit(b"v", headers=[("only", b"x")], route="r")])] * 2,
            )

    def test_constant_headers_are_built_once(self):
        outputs = []

        def fn(m):
            outputs.append(m.output().with_header("region", "eu-west"))
            return outputs[-1]

        outcomes, _ = run(fn, [Msg(b"1"), Msg(b"2")])
        self.assertIs(outputs[0].headers[0], outputs[1].headers[0])
        self.assertEqual(outcomes, [("emit", [emit(v, headers=[("region", b"eu-west")])]) for v in (b"1", b"2")])

    def test_outputs_keep_timestamps_above_2_32(self):
        def fn(m):
            return [m.output(), Output("x", timestamp_ms=2**64 - 1), Output("y", timestamp_ms=0)]

        outcomes, _ = run(fn, [Msg(b"v", timestamp_ms=2**33 + 1)])
        self.assertEqual(
            outcomes,
            [("emit", [emit(b"v", timestamp_ms=2**33 + 1), emit(b"x", timestamp_ms=2**64 - 1),
                       emit(b"y", timestamp_ms=0)])],
        )

    def test_empty_batch(self):
        self.assertEqual(run(lambda m: m, []), ([], []))

    def test_fail_reasons_are_utf8(self):
        outcomes, _ = run(lambda m: Fail("caf\u00e9 \udc80"), [Msg(b"")])
        self.assertEqual(outcomes, [("fail", "caf\u00e9 ?")])

    def test_fail_all(self):
        batch = encode_batch([Msg(b"1"), Msg(b"2")])
        reply = _packed.fail_all(batch, "plugin used before init")
        self.assertEqual(decode_reply(reply, 2), [("fail", "plugin used before init")] * 2)

    def test_a_batch_in_another_format_is_refused(self):
        batch = bytearray(encode_batch([Msg(b"1")]))
        batch[4] = 2
        with self.assertRaisesRegex(ValueError, "version 2"):
            _packed.process(Proc(lambda m: m), bytes(batch), print)
        with self.assertRaisesRegex(ValueError, "bad magic"):
            _packed.process(Proc(lambda m: m), bytes(32), print)


class ProcessBatch(unittest.TestCase):
    def run_batch(self, process_batch, messages):
        class P:
            def process(self, m):
                raise AssertionError("process_batch takes over")

        p = P()
        p.process_batch = process_batch
        reported = []
        reply = _packed.process(p, encode_batch(messages), reported.append)
        return decode_reply(reply, len(messages)), reported

    def test_results_by_position(self):
        messages = [Msg(b"a"), Msg(b"b"), Msg(b"c"), Msg(b"d")]
        outcomes, _ = self.run_batch(lambda batch: [batch[0], None, batch[0], 7], messages)
        self.assertEqual(
            outcomes,
            [("keep",), ("emit", []), ("emit", [emit(b"a")]), ("fail", "process returned int: return an Output, "
                                                              "bytes, str, a list of them, None or Fail")],
        )

    def test_a_wrong_count_or_an_exception_fails_the_batch(self):
        outcomes, _ = self.run_batch(lambda batch: [None], [Msg(b"a"), Msg(b"b")])
        self.assertEqual(outcomes, [("fail", "process_batch returned 1 outcomes for 2 messages")] * 2)

        def boom(batch):
            raise RuntimeError("down")

        outcomes, reported = self.run_batch(boom, [Msg(b"a"), Msg(b"b")])
        self.assertEqual(outcomes, [("fail", "down")] * 2)
        self.assertEqual([str(e) for e in reported], ["down"])


class Values(unittest.TestCase):
    def test_header_is_an_immutable_pair(self):
        h = Header("n", "v")
        self.assertEqual((h.name, h.value), ("n", b"v"))
        self.assertEqual(h, Header(name="n", value=b"v"))
        self.assertEqual(repr(h), "Header(name='n', value=b'v')")
        with self.assertRaises(AttributeError):
            h.value = b"x"

    def test_output_api(self):
        out = Output.json({"a": 1}, key="k", headers=[("h", "1")], route="r")
        self.assertEqual((out.value, out.key, out.headers, out.route), (b'{"a":1}', b"k", [Header("h", b"1")], "r"))
        out.with_value("v").with_key(None).with_route(None).with_header("h", "2").with_header("i", b"3")
        self.assertEqual(out, Output("v", headers=[("h", "2"), ("i", "3")]))
        self.assertEqual((out.header("h"), out.header("zz")), (b"2", None))
        self.assertEqual(out.with_json([1]).value, b"[1]")
        with self.assertRaisesRegex(TypeError, "key must be bytes or str, not int"):
            Output("v", key=1)

    def test_message_built_in_python(self):
        m = Message(b"k", b"v", [Header("a", b"1")], 5, None)
        self.assertEqual((m.key, m.value, m.headers, m.timestamp_ms, m.origin),
                         (b"k", b"v", [Header("a", b"1")], 5, None))
        self.assertEqual(m.header("a"), b"1")
        self.assertEqual(m.output(key=None, timestamp_ms=None).key, None)
        self.assertEqual(m, Message(b"k", b"v", [Header("a", b"1")], 5, None))


if __name__ == "__main__":
    unittest.main()
