"""HTTP checks of a running ropenlp container, for docker/smoke.sh. Standard library only.

    python3 docker/smoke_check.py ready    BASE [--timeout S]   wait until GET /ready answers 200
    python3 docker/smoke_check.py api      BASE [--strict]      /health, /ready, /ner, /similarity
    python3 docker/smoke_check.py drain    BASE --stop CMD...   a long /ner request in flight while
                                                                CMD (e.g. `docker stop`) runs: it must
                                                                still get its 200

``--strict`` (a real model, e.g. the baked-in default bundle): NER must find entities in plain news
sentences and a paraphrase must score above an unrelated sentence. Without it the answers need only
be well-formed (a tiny random bundle finds arbitrary spans).
Exit status 0 when every check passes; each check prints one line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

NER_TEXTS = [
    "我爱北京天安门。",
    "张三在上海的中国银行工作，李四是他的同事。",
    "Emoji 🙂 与全角ＡＢＣ也要有正确的偏移。",
]
PAIRS = [
    ["今天天气很好", "今天天气不错"],
    ["今天天气很好", "我在银行工作"],
    ["北京是中国的首都", "中国的首都是北京"],
]


class CheckFailed(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def call(base: str, method: str, path: str, body: object | None = None, timeout: float = 60.0):
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        return e.code, dict(e.headers), payload


def wait_ready(base: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, _, body = call(base, "GET", "/ready", timeout=5)
            if status == 200:
                return body
            last = (status, body)
            if isinstance(body, dict) and "failed" in str(body.get("error", "")):
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            last = e
        time.sleep(0.25)
    raise CheckFailed(f"/ready not 200 after {timeout:.0f}s; last answer: {last}")


def check_ner(base: str, strict: bool) -> str:
    status, headers, body = call(base, "POST", "/ner", {"texts": NER_TEXTS})
    check(status == 200, f"POST /ner -> {status} {body}")
    check(isinstance(body, dict) and isinstance(body.get("results"), list), f"/ner body: {body}")
    check(
        len(body["results"]) == len(NER_TEXTS),
        f"/ner: {len(body['results'])} results for {len(NER_TEXTS)} texts",
    )
    check("x-inference-time" in {k.lower() for k in headers}, "/ner: no x-inference-time header")
    n = 0
    for text, item in zip(NER_TEXTS, body["results"]):
        for e in item["entities"]:
            check(set(e) >= {"start", "end", "label", "text", "score"}, f"/ner entity fields: {e}")
            check(isinstance(e["start"], int) and isinstance(e["end"], int), f"/ner offsets: {e}")
            check(0 <= e["start"] < e["end"] <= len(text), f"/ner offsets out of range: {e} in {text!r}")
            check(
                text[e["start"] : e["end"]] == e["text"],
                f"/ner: text[{e['start']}:{e['end']}] != {e['text']!r}",
            )
            check(isinstance(e["label"], str) and e["label"], f"/ner label: {e}")
            check(isinstance(e["score"], (int, float)), f"/ner score: {e}")
            n += 1
    if strict:
        check(n > 0, "/ner: no entity found in plain news sentences (default bundle)")
    return f"{n} entities in {len(NER_TEXTS)} texts, offsets consistent"


def check_similarity(base: str, strict: bool) -> str:
    status, _, body = call(base, "POST", "/similarity", {"pairs": PAIRS})
    check(status == 200, f"POST /similarity (pairs) -> {status} {body}")
    scores = body.get("scores")
    check(isinstance(scores, list) and len(scores) == len(PAIRS), f"/similarity scores: {body}")
    check(
        all(isinstance(s, (int, float)) and -1.0001 <= s <= 1.0001 for s in scores),
        f"scores not cosines: {scores}",
    )
    check(len(body.get("truncated", [])) == len(PAIRS), f"/similarity truncated: {body}")

    candidates = [b for _, b in PAIRS]
    status, _, ranked = call(
        base, "POST", "/similarity", {"query": PAIRS[0][0], "candidates": candidates, "top_k": 2}
    )
    check(status == 200, f"POST /similarity (rank) -> {status} {ranked}")
    results = ranked.get("results")
    check(isinstance(results, list) and len(results) == 2, f"/similarity rank results: {ranked}")
    check(results[0]["score"] >= results[1]["score"], f"/similarity rank not sorted: {results}")
    check(
        all(candidates[r["index"]] == r["text"] for r in results), f"/similarity rank index/text: {results}"
    )

    status, _, err = call(base, "POST", "/similarity", {"pairs": [["only one"]]})
    check(status in (400, 422) and "error_type" in err, f"bad /similarity body -> {status} {err}")
    if strict:
        check(
            scores[0] > scores[1], f"paraphrase {scores[0]:.3f} <= unrelated {scores[1]:.3f} (default bundle)"
        )
    return "pairs " + ", ".join(f"{s:.3f}" for s in scores) + f"; rank top-2 {[r['index'] for r in results]}"


def api(base: str, strict: bool) -> None:
    status, _, body = call(base, "GET", "/health")
    check(status == 200 and body == {"status": "alive"}, f"GET /health -> {status} {body}")
    print("ok  GET /health ->", body)
    ready = wait_ready(base, 5)
    print("ok  GET /ready ->", json.dumps(ready, ensure_ascii=False))
    print("ok  POST /ner:", check_ner(base, strict))
    print("ok  POST /similarity:", check_similarity(base, strict))


def drain(base: str, stop: list[str]) -> None:
    """A slow request (long texts, many windows) in flight when the container is told to stop."""
    rng = random.Random(0)
    chars = "我爱北京天安门上海的人中国张三李四工作在是了有和大学银行公司一二三四五六七八九十月日年"
    texts = ["".join(rng.choice(chars) for _ in range(9000)) for _ in range(64)]  # distinct windows
    t0 = time.monotonic()
    status, _, _ = call(base, "POST", "/ner", {"texts": texts[:1], "threshold": 9.9})
    check(status == 200, f"POST /ner (one long text) -> {status}")
    n = max(2, min(64, round(3.0 / max(time.monotonic() - t0, 1e-3))))  # about 3 s of work
    body = {"texts": texts[:n], "threshold": 9.9}
    out: dict = {}

    def request() -> None:
        t0 = time.monotonic()
        try:
            out["status"], _, out["body"] = call(base, "POST", "/ner", body, timeout=120)
        except (OSError, http.client.HTTPException) as e:  # reset / closed: the request was dropped
            out["error"] = repr(e)
        out["elapsed"], out["end"] = time.monotonic() - t0, time.monotonic()

    worker = threading.Thread(target=request)
    worker.start()
    time.sleep(0.5)  # the request is read and queued by now
    stop_at = time.monotonic()
    proc = subprocess.run(stop, check=False, capture_output=True, text=True)
    stop_s = time.monotonic() - stop_at
    worker.join(150)
    check(proc.returncode == 0, f"{' '.join(stop)} failed: {proc.stderr.strip()}")
    check("error" not in out, f"in-flight request dropped on SIGTERM: {out.get('error')}")
    check(out.get("status") == 200, f"in-flight request -> {out.get('status')} {str(out.get('body'))[:200]}")
    overlapped = out["end"] > stop_at
    print(
        f"ok  drain: in-flight /ner ({n} texts of 9k chars, took {out['elapsed']:.1f}s) answered 200; stop took {stop_s:.1f}s; "
        + (
            "the request was still running when SIGTERM was sent"
            if overlapped
            else "NOTE: the request finished before the stop (no overlap this time)"
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["ready", "api", "drain"])
    p.add_argument("base", help="http://127.0.0.1:PORT")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--strict", action="store_true")
    p.add_argument("--stop", nargs=argparse.REMAINDER, default=[])
    a = p.parse_args(argv)
    base = a.base.rstrip("/")
    try:
        if a.what == "ready":
            t0 = time.monotonic()
            info = wait_ready(base, a.timeout)
            print(f"ok  ready after {time.monotonic() - t0:.1f}s:", json.dumps(info, ensure_ascii=False))
        elif a.what == "api":
            api(base, a.strict)
        else:
            check(bool(a.stop), "drain needs --stop CMD ...")
            drain(base, a.stop)
    except CheckFailed as e:
        print(f"FAIL {a.what}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
