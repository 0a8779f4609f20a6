"""HTTP/1.x helpers of the answer summariser (issue 9): the JSON shortcut and
the flattening give what the plain definitions give."""

from __future__ import annotations

import json
from typing import Any, Dict, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycopy_engine.core.http1 import Bad, flatten, framing, load_json

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=6)
_DOCS = st.recursive(_SCALARS, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(
    st.text(max_size=4), kids, max_size=5), max_leaves=40)


def _outcome(fn, raw: bytes) -> Tuple[str, Any]:
    try:
        return "ok", fn(raw)
    except (ValueError, RecursionError) as e:
        return "error", type(e).__name__


@settings(max_examples=300, deadline=None)
@given(_DOCS, st.booleans(), st.sampled_from(["", " ", "\n", "\r\n  "]),
       st.sampled_from(["", " ", "\n", "x", "]", "}"]), st.sampled_from(["utf-8", "utf-16-le"]))
def test_load_json_is_json_loads(doc, ascii_only, before, after, encoding):
    raw = (before + json.dumps(doc, ensure_ascii=ascii_only) + after).encode(encoding)
    assert repr(_outcome(load_json, raw)) == repr(_outcome(json.loads, raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([b"", b"{", b"[", b"[1", b'{"a":']))
def test_load_json_is_json_loads_on_any_bytes(tail, head):
    raw = head + tail
    assert repr(_outcome(load_json, raw)) == repr(_outcome(json.loads, raw))


def _reference(doc: Any, limit: int) -> Tuple[Dict[str, Any], bool]:
    """The definition: every scalar by path, in document order; the first
    ``limit`` kept, the flag set when there were more."""
    out: Dict[str, Any] = {}

    def walk(v: Any, path: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, path + "." + k if path else k)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, "%s[%d]" % (path, i))
        else:
            out[path] = v

    if not isinstance(doc, (dict, list)):
        return {"": doc}, False
    walk(doc, "")
    items = list(out.items())
    return dict(items[:limit]), len(items) > limit


@settings(max_examples=400, deadline=None)
@given(_DOCS, st.integers(0, 8))
def test_flatten_is_the_definition(doc, limit):
    got = flatten(doc, limit)
    want = _reference(doc, limit)
    assert got == want
    assert list(got[0]) == list(want[0])  # document order


def test_flatten_long_lists_and_exact_limit():
    doc = {"a": list(range(1500)), "b": [[{}] * 1200 + [7]]}
    assert flatten(doc, 2000) == _reference(doc, 2000)
    assert flatten(doc)[1] is True and len(flatten(doc)[0]) == 512
    exact = {"a": list(range(512)), "b": [], "c": {}}
    assert flatten(exact) == (dict(("a[%d]" % i, i) for i in range(512)), False)


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b3", "\u00b9"])
def test_content_length_with_superscript_digits_is_bad(value):
    # str.isdigit() accepts them, int() does not: a parse error, never a ValueError
    with pytest.raises(Bad, match="bad content-length"):
        framing({"content-length": [value]}, False)
    with pytest.raises(Bad, match="bad content-length"):
        framing({"content-length": [value, value]}, True)
