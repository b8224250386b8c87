"""Training: run configs (``config``), data readers (``data``), vocabularies (``vocab``), the generic
loop (``loop``) and the trainers (``mlm``; NER, similarity and whitening next). Nothing is imported
here: ``config``, ``data`` and ``vocab`` are torch-free, the rest import torch."""
