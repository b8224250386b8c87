"""Serving: ONNX Runtime behind an HTTP app (Litestar) and a batch CLI. Never imports torch.

Three layers, one direction::

    http/        parse, call, render; the error table; metrics; API key   (Litestar)
      -> batching.py  bounded queue, token-budget batches, one inference worker per core (server only)
      -> core.py      the engine: an operation's job by token budget       (HTTP-free; the CLI calls it)
           tasks/     one module per task kind: validate, tokenize (windows), decode, merge, render
      -> runtime.py   ONNX Runtime sessions behind the ``Runtime`` protocol

``settings.py`` (``ROPENLP_*`` variables / ``ropenlp serve`` flags), ``errors.py`` (one class per
failure), ``metrics.py`` (Prometheus, one registry per app), ``cli.py`` (``ropenlp serve``).
"""
