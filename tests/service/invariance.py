"""The batch-invariance contract, as checks shared by the tests of the tiny and the shipped bundles: a text's
NER entities are identical and its scores / vectors within ``BOUND`` whether it is sent alone or in a batch
with other neighbours and lengths (engine level: ``service.core.Engine``; HTTP level: a real server)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BOUND = 1e-4  # issue 16: |alone - in a batch| for fp32 and int8

# Varied lengths (1 to ~150 characters: several NER windows for the long ones), scripts and entities.
TEXTS = [
    "好",
    "李明是上海市第一人民医院的医生。",
    "张伟和王芳去上海旅游，住在外滩附近的和平饭店。",
    "2023年5月，华为公司在深圳发布了新款手机Mate 60。",
    "我爱北京天安门！",
    "《三体》是刘慈欣创作的长篇科幻小说，讲述了地球文明与三体文明的故事。",
    "患者出现发热、咳嗽等症状，诊断为肺炎，给予阿莫西林治疗。",
    "苹果公司CEO蒂姆·库克访问了杭州的阿里巴巴总部😀",
    "他说：“明天下午三点在清华大学东门见。”",
    "第十四届全国人民代表大会第一次会议于2023年3月5日在北京人民大会堂开幕，国务院总理在会上作政府工作报告，"
    "回顾了过去五年的工作，提出了今年经济社会发展的主要目标，包括国内生产总值增长百分之五左右、"
    "城镇新增就业一千二百万人左右、居民消费价格涨幅百分之三左右。",
    "中国人民银行宣布下调存款准备金率0.25个百分点。",
    "周杰伦在台北举办了演唱会，门票很快售罄。",
]


def groupings(n: int, seed: int = 0, sizes: tuple[int, ...] = (3, 5)) -> list[list[int]]:
    """Ways to send ``n`` texts: all together, all reversed, and shuffled groups of ``sizes`` (every text
    meets other neighbours and padding lengths each time)."""
    rng = random.Random(seed)
    out = [list(range(n)), list(range(n))[::-1]]
    for size in sizes:
        order = list(range(n))
        rng.shuffle(order)
        out += [order[k : k + size] for k in range(0, n, size)]
    return out


def _entities(items) -> dict[tuple[int, int, str], float]:
    return {(e.start, e.end, e.label): e.score for e in items}


def _compare_entities(alone: dict, got: dict, what: str) -> float:
    assert set(alone) == set(got), f"{what}: entities differ alone vs in a batch: {set(alone) ^ set(got)}"
    return max((abs(alone[k] - got[k]) for k in alone), default=0.0)


def engine_batch_dependence(engine, texts=TEXTS) -> dict[str, float]:
    """Largest |alone - in a batch| per operation the engine serves (NER entity scores, embedding components,
    after asserting identical entity sets); raises AssertionError when an entity set differs."""
    out: dict[str, float] = {}
    groups = groupings(len(texts))
    if "ner" in engine.tasks:
        alone = [_entities(engine.run("ner", texts=[t]).entities[0]) for t in texts]
        assert sum(map(len, alone)) > 0, "no entity found: the comparison would be vacuous"
        worst = 0.0
        for group in groups:
            found = engine.run("ner", texts=[texts[i] for i in group]).entities
            for i, items in zip(group, found, strict=True):
                worst = max(worst, _compare_entities(alone[i], _entities(items), f"text {i} in {group}"))
        out["ner"] = worst
    if "similarity" in engine.tasks:
        alone = [engine.run("embed", texts=[t]).vectors[0] for t in texts]
        worst = 0.0
        for group in groups:
            vectors = engine.run("embed", texts=[texts[i] for i in group]).vectors
            for i, v in zip(group, vectors, strict=True):
                worst = max(worst, float(np.abs(np.asarray(v, np.float64) - alone[i]).max()))
        out["embed"] = worst
    return out


def http_batch_dependence(base: str, texts=TEXTS, *, ner: bool = True, embed: bool = True) -> dict[str, float]:
    """The same through a real server: ``POST /ner`` (and ``/embed``) one text per request vs batched requests."""
    import httpx

    out: dict[str, float] = {}
    groups = groupings(len(texts), sizes=(3,))
    with httpx.Client(base_url=base, timeout=60) as client:

        def post(route: str, group_texts: list[str]) -> dict:
            r = client.post(route, json={"texts": group_texts})
            assert r.status_code == 200, r.text
            return r.json()

        if ner:
            def ents(item) -> dict:
                return {(e["start"], e["end"], e["label"]): e["score"] for e in item["entities"]}

            alone = [ents(post("/ner", [t])["results"][0]) for t in texts]
            worst = 0.0
            for group in groups:
                results = post("/ner", [texts[i] for i in group])["results"]
                for i, item in zip(group, results, strict=True):
                    worst = max(worst, _compare_entities(alone[i], ents(item), f"POST /ner text {i} in {group}"))
            # one text per request, all at once: the batcher puts the rows of concurrent requests in shared batches
            with ThreadPoolExecutor(len(texts)) as pool:
                together = list(pool.map(lambda t: post("/ner", [t])["results"][0], texts))
            for i, item in enumerate(together):
                worst = max(worst, _compare_entities(alone[i], ents(item), f"concurrent POST /ner text {i}"))
            out["ner"] = worst
        if embed:
            alone = [np.asarray(post("/embed", [t])["vectors"][0]) for t in texts]
            worst = 0.0
            for group in groups:
                for i, v in zip(group, post("/embed", [texts[i] for i in group])["vectors"], strict=True):
                    worst = max(worst, float(np.abs(np.asarray(v) - alone[i]).max()))
            out["embed"] = worst
    return out
