"""A labelled NER file in traditional characters, for measuring ``normalize: t2s`` (docs/models.md).

    python -m ropenlp.traditional ../shared/data/cluener/dev.json runs/cluener_dev_traditional.json

Converts each record's text with OpenCC ``s2t`` (simplified -> traditional, phrase-aware: what a
Taiwanese or Hong Kong text looks like) and the entity mentions with it. ``s2t`` keeps the length of
every text here (checked: a record whose length would change is an error), so CLUENER's character
spans stay valid. Reads CLUENER JSON lines (``{"text", "label": {type: {mention: [[s, e]]}}}``); other
keys are copied unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def convert(src: str | Path, dst: str | Path, config: str = "s2t") -> dict[str, int]:
    import opencc

    conv = opencc.OpenCC(config)
    records = chars = changed = 0
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            original, text = r["text"], conv.convert(r["text"])
            if len(text) != len(r["text"]):
                raise ValueError(f"{src}:{n}: {config} changed the text's length: spans would move")
            r["text"] = text
            r["label"] = {t: {conv.convert(m): s for m, s in ments.items()} for t, ments in r.get("label", {}).items()}
            for spans in r["label"].values():
                for mention, where in spans.items():
                    if any(text[s : e + 1] != mention for s, e in where):
                        raise ValueError(f"{src}:{n}: mention {mention!r} is not at its span after {config}")
            records += 1
            chars += len(text)
            changed += sum(a != b for a, b in zip(text, original))
            g.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"records": records, "chars": chars, "chars_changed": changed}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m ropenlp.traditional IN.json OUT.json")
    print(json.dumps(convert(sys.argv[1], sys.argv[2])))
