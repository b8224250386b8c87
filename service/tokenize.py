"""``/tokenize``: what the model sees of each text, without running it (core: no HTTP here).

Per text: the text as the tokenizer saw it (after the bundle's normalisation, same length), the
tokens, their ids and character offsets into the original text, the number of ``[UNK]`` tokens, the
NER windows (token and character ranges of each ``[CLS] ... [SEP]`` row the NER graph would run:
``max_length`` tokens, ``stride`` apart; one window when the text fits) and whether the similarity
model would truncate it. The same tokenizer, normaliser and window code as the engine's tasks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.core import Engine
from service.jobs import Limits
from service.tasks import Body
from service.tasks.base import constrained, items_type, text_type
from service.validate import check_texts


class TokenizeQuery(Body):
    texts: list[str] = Field(description="texts to tokenize (the same limits as /ner)")

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        return constrained(cls, {"texts": items_type(text_type(limits), limits)})


class WindowOut(BaseModel):
    token_start: int = Field(description="index of the window's first token in `tokens`")
    token_end: int = Field(description="exclusive")
    start: int = Field(description="character offset of the window's first character in the original text")
    end: int = Field(description="exclusive")


class TokenizeItem(BaseModel):
    normalized: str = Field(description="the text the tokenizer saw (the bundle's normalisation; same length)")
    tokens: list[str] = Field(description="WordPiece tokens, [CLS] and [SEP] left out")
    ids: list[int]
    offsets: list[tuple[int, int]] = Field(description="[start, end) character offsets into the original text")
    unknown: int = Field(description="how many tokens are [UNK] (characters outside the vocabulary)")
    windows: list[WindowOut] | None = Field(None, description="the rows the NER graph runs (null: no NER task)")
    truncated: bool | None = Field(
        None, description="the similarity model would cut this text to its max_length (null: no similarity task)"
    )


class TokenizeResponse(BaseModel):
    results: list[TokenizeItem] = Field(description="one per input text, in input order")
    ner_max_length: int | None = Field(None, description="tokens per NER window, [CLS] and [SEP] included")
    ner_stride: int | None = Field(None, description="tokens between NER window starts")
    similarity_max_length: int | None = None


def tokenize(engine: Engine, query: TokenizeQuery) -> TokenizeResponse:
    """Check ``query.texts`` (the request limits) and describe each as the tasks' rows see it."""
    tok = engine.tokenizer
    texts = check_texts(query.texts, "texts", engine.limits)
    ner = engine.task("ner") if "ner" in engine.tasks else None
    sim = engine.task("similarity").spec.max_length if "similarity" in engine.tasks else None
    norm = tok.normalizer or (lambda s: s)
    unk = tok.unk_id
    items = []
    for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False)):
        ids = enc.ids.tolist()
        offsets = [(int(a), int(b)) for a, b in enc.offsets.tolist()]
        windows = None
        if ner is not None:
            if len(ids) + 2 <= ner.max_length:
                spans = [(0, len(ids))]
            else:
                spans = [(w.token_start, w.token_start + len(w) - 2)
                         for w in tok.windows(enc, max_length=ner.max_length, stride=ner.stride)]  # fmt: skip
            windows = [WindowOut(token_start=a, token_end=b, start=offsets[a][0] if b > a else 0,
                                 end=offsets[b - 1][1] if b > a else 0) for a, b in spans]  # fmt: skip
        items.append(TokenizeItem(
            normalized=norm(text), tokens=[tok.id_to_token(i) or "" for i in ids], ids=ids, offsets=offsets,
            unknown=sum(i == unk for i in ids), windows=windows,
            truncated=None if sim is None else len(ids) + 2 > sim,
        ))  # fmt: skip
    return TokenizeResponse(
        results=items,
        ner_max_length=None if ner is None else ner.max_length,
        ner_stride=None if ner is None else ner.stride,
        similarity_max_length=sim,
    )
