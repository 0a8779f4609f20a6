"""Synthetic ``tcpcopy --compare`` records (COMPARE.md §2) for the report's tests.

Online, a baseline (online's version) and a candidate answer the same
requests. Every JSON answer of all three carries fields that differ on every
request (a timestamp, a random id, a shuffled list) and the non-JSON ones a
timestamp in the body; the candidate has exactly three planted regressions:

* ``GET /orders/{id}`` answers 500 instead of 200;
* ``GET /items/{id}`` is 50 ms slower;
* ``GET /users/{id}``: the field ``name`` has another value (and length).
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

BASELINE = "10.9.0.12:8080"
CANDIDATE = "10.9.0.14:8080"
PLANTED = {
    ("GET /orders/{id}", CANDIDATE, "status", None),
    ("GET /items/{id}", CANDIDATE, "latency", None),
    ("GET /users/{id}", CANDIDATE, "field", "name"),
}


def _digest(b: bytes) -> str:
    return hashlib.blake2b(b, digest_size=16).hexdigest()


def _flatten(doc: Any, path: str = "") -> Dict[str, Any]:
    if isinstance(doc, dict):
        out: Dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flatten(v, f"{path}.{k}" if path else k))
        return out
    if isinstance(doc, list):
        out = {}
        for i, v in enumerate(doc):
            out.update(_flatten(v, f"{path}[{i}]"))
        return out
    return {path: doc}


def _answer(rng: random.Random, status: int, doc: Optional[Dict[str, Any]], text: Optional[bytes],
            ms: float) -> Dict[str, Any]:
    if doc is not None:
        body = json.dumps(doc).encode()
        a = {"status": status, "headers": {"content-type": "application/json"},
             "size": len(body), "digest": _digest(body), "fields": _flatten(doc)}
    else:
        body = text or b""
        a = {"status": status, "headers": {"content-type": "text/plain"}, "size": len(body),
             "digest": _digest(body)}
    first = round(ms * rng.uniform(0.5, 0.9), 3)
    a.update({"first": first, "last": round(ms, 3)})
    return a


def _doc(rng: random.Random, who: str, kind: str, key: str, t: float) -> Dict[str, Any]:
    tags = ["a", "b", "c", "d", "e"]
    rng.shuffle(tags)
    doc: Dict[str, Any] = {"ts": round(t + rng.uniform(0, 0.02), 6), "request_id": uuid.UUID(
        int=rng.getrandbits(128)).hex, "tags": tags}
    if kind == "users":
        doc.update({"id": int(key), "name": "user-%s" % key, "plan": "basic"})
        if who == "candidate":
            doc["name"] = "User %s (new)" % key
    elif kind == "orders":
        doc.update({"order": key, "items": [{"sku": "x-%d" % i, "qty": i} for i in range(3)]})
    elif kind == "items":
        doc.update({"item": key, "price": 9.5, "stock": True})
    else:
        doc.update({"hits": [{"id": i} for i in range(4)], "total": 4})
    return doc


def records(n_per_endpoint: int = 40, seed: int = 1) -> List[Dict[str, Any]]:
    rng = random.Random(seed)
    out: List[Dict[str, Any]] = []
    t0 = 1764633600.0
    kinds = ["users", "orders", "items", "search", "health", "logo"]
    for i in range(n_per_endpoint * len(kinds)):
        kind = kinds[i % len(kinds)]
        t = t0 + i * 0.05
        if kind == "users":
            key, method, path = str(rng.randrange(1, 10**6)), "GET", None
            path = "/users/%s?fields=all" % key
        elif kind == "orders":
            key, method = "%016x" % rng.getrandbits(64), "GET"
            path = "/orders/%s" % key
        elif kind == "items":
            key, method = str(uuid.UUID(int=rng.getrandbits(128))), "GET"
            path = "/items/%s" % key
        elif kind == "search":
            key, method, path = "", "POST", "/search?q=%d" % i
        else:
            key, method = "", "GET"
            path = "/health" if kind == "health" else "/static/logo.png"
        base_ms = rng.lognormvariate(1.6, 0.35)  # ~5 ms
        answers: Dict[str, Any] = {}
        for who, name in (("online", "online"), ("baseline", BASELINE),
                          ("candidate", CANDIDATE)):
            ms = base_ms * rng.uniform(0.85, 1.15) + (0.0 if who == "online" else 0.3)
            if kind == "items" and who == "candidate":
                ms += 50.0
            status = 500 if (kind == "orders" and who == "candidate") else 200
            if kind in ("health", "logo"):
                text = (b"ok %.6f\n" % (t + rng.random()) if kind == "health"
                        else b"\x89PNG" + bytes(range(200)))
                answers[name] = _answer(rng, status, None, text, ms)
            elif status == 500:
                answers[name] = _answer(rng, 500, None, b"internal error\n", ms * 0.5)
            else:
                answers[name] = _answer(rng, status, _doc(rng, who, kind, key, t), None, ms)
        if kind == "health" and i == 4:  # one lost copy: a chance difference, not a regression
            answers[CANDIDATE] = None
        req_bytes = ("%s %s HTTP/1.1\r\n\r\n" % (method, path)).encode()
        out.append({"t": t, "flow": "10.9.0.10:%d" % (40000 + i), "n": i % 3, "proto": "http",
                    "req": {"method": method, "path": path, "size": len(req_bytes),
                            "digest": _digest(req_bytes)},
                    "answers": answers})
    return out


def write_dir(directory: Path, recs: List[Dict[str, Any]]) -> Path:
    """Two rotated files, as tcpcopy --compare leaves them."""
    directory.mkdir(parents=True, exist_ok=True)
    half = len(recs) // 2
    for name, part in (("compare-20261201-000000.jsonl", recs[:half]),
                       ("compare-20261201-001500.jsonl", recs[half:])):
        with open(directory / name, "w") as fh:
            for r in part:
                fh.write(json.dumps(r) + "\n")
    return directory
