"""``ropenlp serve`` in a real process, over a :class:`~tests.service.fakes.FakeRuntime` instead of ONNX Runtime.

    python -m tests.service.fake_server BUNDLE [--delay SECONDS] [--hang-on CHAR]

The production path (``service.cli.run_server``: uvicorn, signals, drain) with a model whose speed and
faults the tests choose: ``--delay`` per batch, ``--hang-on``: a batch holding this character never
returns. Settings come from the ``ROPENLP_*`` variables, as for ``ropenlp serve``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.text import Tokenizer
from service.cli import run_server
from service.jobs import Limits
from service.settings import Settings
from tests.service.fakes import fake_engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hang-on", default=None)
    args = parser.parse_args()
    settings = Settings.from_env(bundle=args.bundle)
    hang = None
    if args.hang_on is not None:
        from models.bundle import load_manifest

        tokenizer = Tokenizer.load(args.bundle / load_manifest(args.bundle).tokenizer)
        hang = tokenizer.token_to_id(args.hang_on)
    engine, _ = fake_engine(args.bundle, delay=args.delay, hang_on_id=hang, limits=Limits.of(settings))
    run_server(settings, engine=engine)


if __name__ == "__main__":
    main()
