"""ropenlp: nested Chinese NER and sentence similarity on RoFormer, served by ONNX Runtime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ropenlp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
