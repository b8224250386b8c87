"""PyTorch task checkpoint -> ONNX bundle (fp32 / fp16 / int8), parity-checked. See ``export.onnx``.

Nothing heavy is imported here: ``export.cli`` must load without torch.
"""
