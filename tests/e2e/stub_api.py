"""A stand-in for the real API, for the demo page tests: fixed answers, same JSON shapes.

The NER stub "finds" the words of a fixed gazetteer (nested pairs included: 北京 inside 北京大学,
中国 inside 中国人民银行) with fixed scores, at code-point offsets as Python counts them. The tests
never trust the stub: they ask the API for its answer and check that the page drew exactly that.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Litestar, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from service.demo import demo_router

GAZETTEER = {  # word -> (label, score)
    "北京大学": ("ORG", 0.98),
    "北京": ("LOC", 0.91),
    "中国人民银行": ("ORG", 0.97),
    "中国": ("LOC", 0.88),
    "上海": ("LOC", 0.95),
    "张三": ("PER", 0.99),
    "李四": ("PER", 0.96),
}
MAX_CHARS = 5000
JSON = Annotated[dict[str, Any], Body(media_type=RequestEncodingType.JSON)]
SIMILAR = {"今天的天气如何": 0.93, "今天天气好不好": 0.88, "明天会下雨吗": 0.41, "我想去北京大学": 0.05}


def find_entities(text: str, threshold: float) -> list[dict[str, Any]]:
    found = []
    for word, (label, score) in GAZETTEER.items():
        start = text.find(word)
        while start != -1:
            if score > threshold:
                found.append({"start": start, "end": start + len(word), "label": label,
                              "text": word, "score": score})
            start = text.find(word, start + 1)
    return sorted(found, key=lambda e: (e["start"], -e["end"]))


def error(status: int, message: str, error_type: str, **extra: Any) -> Response[dict[str, Any]]:
    return Response({"error": message, "error_type": error_type, **extra}, status_code=status)


def create_stub_app(api_key: str | None) -> tuple[Litestar, list[dict[str, str]]]:
    """The stub app and the list of headers of every API request it received (newest last)."""
    seen: list[dict[str, str]] = []

    def refused(request: Request) -> Response[dict[str, Any]] | None:
        seen.append(dict(request.headers))
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "missing or wrong API key", "Unauthorized")
        return None

    @post("/ner", status_code=200)
    async def ner(request: Request, data: JSON) -> Response[dict[str, Any]]:
        if (refusal := refused(request)) is not None:
            return refusal
        texts, threshold = data.get("texts", []), data.get("threshold", 0.0)
        for i, text in enumerate(texts):
            if len(text) > MAX_CHARS:
                return error(413, f"text {i} has {len(text)} characters; the limit is {MAX_CHARS}",
                             "TextTooLong", field=f"texts[{i}]", limit=MAX_CHARS)
        return Response({"results": [{"entities": find_entities(t, threshold)} for t in texts]})

    @post("/similarity", status_code=200)
    async def similarity(request: Request, data: JSON) -> Response[dict[str, Any]]:
        if (refusal := refused(request)) is not None:
            return refusal
        candidates = data.get("candidates", [])
        ranked = sorted(({"index": i, "text": c, "score": SIMILAR.get(c, 0.0)}
                         for i, c in enumerate(candidates)), key=lambda r: -r["score"])
        return Response({"results": ranked[: data.get("top_k") or len(ranked)]})

    @get("/info", sync_to_thread=False)
    def info() -> dict[str, Any]:
        return {"model": "stub-roformer-gp (test double)", "labels": ["LOC", "ORG", "PER"],
                "limits": {"max_texts": 32, "max_chars": MAX_CHARS}}

    return Litestar(route_handlers=[ner, similarity, info, demo_router()]), seen
