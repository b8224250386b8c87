"""PyTorch task checkpoint -> ONNX bundle (fp32 / fp16 / int8 / int8-dynamic), parity-checked. See ``export.onnx``.

Nothing heavy is imported here. The ``ropenlp export`` / ``ropenlp requantize`` commands are in ``ropenlp.export``
(they read calibration texts with training's readers, which this package does not import).
"""
