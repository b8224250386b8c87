"""Masked-LM pre-training of a RoFormer encoder (from scratch, or continuing a checkpoint).

Read top to bottom: config sections -> building the model (the MLM model of :mod:`models.mlm`, or
ELECTRA's generator + discriminator of :mod:`training.electra`) -> dynamic masking (per character,
or whole words from jieba's segmentation) -> packing lines into sequences (cached on disk) ->
evaluation -> ``train_mlm``, the function behind ``ropenlp train mlm``.

A saved MLM model is a Hugging Face ``RoFormerForMaskedLM`` directory; a saved ELECTRA model is the
discriminator as a ``RoFormerModel`` directory with the generator in ``generator/`` (see
:mod:`training.electra`). Both load in ``transformers`` and ``RoFormerEncoder.from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.mlm import IGNORE, RoFormerForMlm
from models.roformer import RoFormerConfig, RoFormerEncoder
from models.text import Tokenizer, pad_batch
from training.config import ConfigError, OutputConfig, TrainingConfig, load_config, to_dict
from training.data import ReadReport, TextRecord, TextSource, is_heldout, read_texts, write_json
from training.electra import ElectraConfig, RoFormerForElectra, evaluate_electra
from training.encoders import VocabConfig, check_length, encoder_overrides, tokenizer_for
from training.batches import EpochBatches
from training.loop import FitResult, finish_run, fit, open_run, to_device, write_run_config
from training.prefetch import Prefetch
from training.release import RECORD_FILE
from training.vocab import unk_rate

log = logging.getLogger(__name__)
DATA_START_FILE = "data_start.json"  # where a stage's data began (its first start), for resumed runs

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlmDataConfig:
    """``[data]``: texts to pre-train on. Relative paths are taken under ``root``, itself relative to
    the current directory (run from the repository root)."""

    root: str = "."
    sources: tuple[TextSource, ...] = ()
    heldout_fraction: float = 0.005  # of distinct texts (by content hash), for eval loss/accuracy
    max_length: int = 128  # tokens per sequence, [CLS] and [SEP]s included
    pack: Literal["fill", "lines", "none"] = "fill"  # how lines share sequences: see pack_sequences
    prefetch: int = 4  # batches built ahead on a background thread; 0 = in the training thread
    cache_dir: str = ""  # packed sequences saved here (keyed by files, vocabulary, packing); "" = none
    on_error: Literal["raise", "skip"] = "raise"  # unreadable records: stop, or skip them and report
    continue_position: bool = True  # start where model.init's stage stopped (encoder.json data_position)

    def __post_init__(self):
        if self.max_length < 8:
            raise ValueError(f"data.max_length must be >= 8, got {self.max_length}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"data.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


@dataclass(frozen=True)
class MlmModelConfig:
    """``[model]``: continue from ``init`` (a Hugging Face RoFormer folder) or build ``[model.encoder]``.

    ``encoder.vocab_size = 0`` means the vocabulary's size. With ``init``, encoder fields set to
    other than their defaults (e.g. dropout) replace the checkpoint's.
    """

    init: str = ""
    encoder: RoFormerConfig = field(default_factory=lambda: RoFormerConfig(vocab_size=0))


@dataclass(frozen=True)
class MaskingConfig:
    """``[mlm]``: BERT dynamic masking: ``mask_prob`` of the non-special tokens are predicted; of
    those, ``replace_mask`` become [MASK], ``replace_random`` a random token, the rest stay."""

    mask_prob: float = 0.15
    replace_mask: float = 0.8
    replace_random: float = 0.1
    # "mlm": predict the masked tokens; "electra": a small generator fills them in and the encoder
    # tells replaced from original at every token (training/electra.py)
    objective: Literal["mlm", "electra"] = "mlm"
    # whole-word masking: words (jieba's segmentation of each sequence) are chosen with mask_prob and
    # all their characters masked together, as Chinese-BERT-wwm / MacBERT do; otherwise characters
    whole_word: bool = False

    def __post_init__(self):
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mlm.mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.replace_mask < 0 or self.replace_random < 0 or self.replace_mask + self.replace_random > 1:
            raise ValueError("mlm.replace_mask and mlm.replace_random must be >= 0 and sum to <= 1")


@dataclass(frozen=True)
class MlmConfig:
    data: MlmDataConfig = field(default_factory=MlmDataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: MlmModelConfig = field(default_factory=MlmModelConfig)
    mlm: MaskingConfig = field(default_factory=MaskingConfig)
    electra: ElectraConfig = field(default_factory=ElectraConfig)  # used with mlm.objective = "electra"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=lambda: OutputConfig(dir="runs/mlm"))


def load_mlm_config(path: str | Path | None, overrides=()) -> MlmConfig:
    return load_config(MlmConfig, path, overrides)


def build_model(cfg: MlmModelConfig, vocab_size: int, *, objective: str = "mlm",
                electra: ElectraConfig = ElectraConfig()) -> RoFormerForMlm | RoFormerForElectra:
    """The MLM model, or (``objective = "electra"``) the generator + discriminator pair: from
    ``cfg.init`` (a new stage of a saved run; a plain RoFormer folder gets a new head / generator) or new."""
    overrides = encoder_overrides(cfg.encoder)
    if objective == "electra":
        if cfg.init:
            model = RoFormerForElectra.from_pretrained(cfg.init, electra, **overrides)
        else:
            enc = cfg.encoder if cfg.encoder.vocab_size else dataclasses.replace(cfg.encoder, vocab_size=vocab_size)
            model = RoFormerForElectra.build(RoFormerEncoder(enc), electra)
    elif cfg.init:
        model = RoFormerForMlm.from_pretrained(cfg.init, **overrides)
    else:
        enc = cfg.encoder
        if enc.vocab_size == 0:
            enc = dataclasses.replace(enc, vocab_size=vocab_size)
        model = RoFormerForMlm(RoFormerEncoder(enc))
    if model.cfg.vocab_size < vocab_size:
        raise ValueError(f"the model has {model.cfg.vocab_size} token embeddings but the vocabulary has "
                         f"{vocab_size} tokens")
    return model


# --------------------------------------------------------------------------------------------
# Dynamic masking
# --------------------------------------------------------------------------------------------


def mask_tokens(input_ids: torch.Tensor, *, special_ids: Sequence[int], mask_id: int, vocab_size: int,
                generator: torch.Generator | None = None, cfg: MaskingConfig = MaskingConfig(),
                word_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: ``(inputs, targets)``; targets hold the original id where a token is to be
    predicted and -100 elsewhere. Special tokens (padding, [CLS], [SEP], [UNK], [MASK]) are never
    chosen, and random replacements are never special tokens.

    ``word_ids`` (B, T): the index of each token's word within its row (whole-word masking): a word
    is chosen with ``mask_prob`` and then all its tokens are, so ``mask_prob`` of the tokens are
    still chosen on average; the 80/10/10 replacement stays per token."""
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype)
    candidates = ~torch.isin(input_ids, special)  # (B, T)
    draw = torch.rand(input_ids.shape, generator=generator)  # (B, T): per token, or per word index
    if word_ids is not None:
        draw = draw.gather(1, word_ids)  # (B, T): every token of a word gets its word's draw
    chosen = (draw < cfg.mask_prob) & candidates
    targets = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    r = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (r < cfg.replace_mask)
    to_random = chosen & (r >= cfg.replace_mask) & (r < cfg.replace_mask + cfg.replace_random)
    ordinary = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)), dtype=input_ids.dtype)
    random_ids = ordinary[torch.randint(len(ordinary), input_ids.shape, generator=generator)]
    inputs = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, targets


class WordSegmenter:
    """Word index of every token of a packed sequence, from jieba's segmentation of its text.

    The text is rebuilt from the tokens (character vocabulary: a token is a character, ``##`` pieces
    continue the one before); special tokens are their own words and end any word."""

    def __init__(self, tokenizer: Tokenizer, special_ids: Sequence[int]):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        self._tokenize = jieba.tokenize
        special = set(special_ids)
        self.pieces = []  # id -> (text, is_special, continues the token before)
        for i in range(tokenizer.vocab_size):
            tok = tokenizer.id_to_token(i) or ""
            if i in special or (tok.startswith("[") and tok.endswith("]")):
                self.pieces.append(("\n", True, False))
            elif tok.startswith("##") and len(tok) > 2:
                self.pieces.append((tok[2:], False, True))
            else:
                self.pieces.append((tok, False, False))

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """(T,) token ids -> (T,) word index of each token (0-based, non-decreasing)."""
        texts, starts, cont, special = [], [], [], []
        pos = 0
        for i in ids.tolist():
            text, is_special, continues = self.pieces[i]
            texts.append(text)
            starts.append(pos)
            special.append(is_special)
            cont.append(continues)
            pos += len(text)
        word_starts = {start for _, start, _ in self._tokenize("".join(texts))}
        first = np.array([s or (st in word_starts and not c) for st, s, c in zip(starts, special, cont)])
        after_special = np.zeros(len(first), dtype=bool)
        after_special[1:] = np.asarray(special[:-1])
        first |= after_special
        first[0] = True
        return np.cumsum(first) - 1


class MlmCollator:
    """Pads a list of id arrays and masks them: ``{input_ids, attention_mask, targets}``."""

    def __init__(self, tokenizer: Tokenizer, cfg: MaskingConfig):
        if tokenizer.mask_id is None:
            raise ValueError("the vocabulary has no [MASK] token: MLM needs one")
        self.pad_id, self.mask_id, self.cfg = tokenizer.pad_id, tokenizer.mask_id, cfg
        self.special_ids = sorted({tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
                                   tokenizer.mask_id})
        self.vocab_size = tokenizer.vocab_size
        self.words = WordSegmenter(tokenizer, self.special_ids) if cfg.whole_word else None

    def __call__(self, seqs: list[np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch(seqs, pad_id=self.pad_id)
        word_ids = None
        if self.words is not None:
            word_ids = np.zeros(ids.shape, dtype=np.int64)  # padding: word 0, never a candidate
            for row, seq in enumerate(seqs):
                word_ids[row, : len(seq)] = self.words(np.asarray(seq))
            word_ids = torch.from_numpy(word_ids)
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)  # (B, T)
        inputs, targets = mask_tokens(ids, special_ids=self.special_ids, mask_id=self.mask_id,
                                      vocab_size=self.vocab_size, generator=generator, cfg=self.cfg,
                                      word_ids=word_ids)
        return {"input_ids": inputs, "attention_mask": mask, "targets": targets}


# --------------------------------------------------------------------------------------------
# Sequences: tokenize, then pack consecutive lines of a file
# --------------------------------------------------------------------------------------------


def tokenize_records(tokenizer: Tokenizer, records: Sequence[TextRecord], *, chunk: int = 8192
                     ) -> list[tuple[str, np.ndarray]]:
    """``(path, token ids)`` per record, no specials."""
    out = []
    for i in range(0, len(records), chunk):
        part = records[i: i + chunk]
        encs = tokenizer.encode_batch([r.text for r in part], add_special_tokens=False)
        out.extend((r.path, e.ids.astype(np.int32)) for r, e in zip(part, encs))
    return out


def pack_sequences(lines: Iterable[tuple[str, np.ndarray]], *, max_length: int, cls_id: int, sep_id: int,
                   pack: str = "fill") -> list[np.ndarray]:
    """``[CLS] line [SEP] line [SEP] ...`` sequences of at most ``max_length`` tokens.

    Lines of one file are packed in order, never across files. ``pack``:

    * ``"fill"``: every sequence is filled to ``max_length``, a line that does not fit continues in
      the next sequence (no padding, so the most real tokens per second);
    * ``"lines"``: a line that does not fit in the room left starts a new sequence (a line is cut
      only when longer than a whole sequence);
    * ``"none"``: one line (or piece of a long line) per sequence.

    Every token of every line lands in exactly one sequence.
    """
    if pack not in ("fill", "lines", "none"):
        raise ValueError(f"pack must be 'fill', 'lines' or 'none', got {pack!r}")
    body = max_length - 1  # room after [CLS]
    seqs: list[np.ndarray] = []
    cur: list[int] = []

    def flush():
        if cur:
            seqs.append(np.asarray([cls_id] + cur, dtype=np.int32))
            cur.clear()

    for _, group in groupby(lines, key=lambda x: x[0]):  # consecutive lines of one file
        for _, ids in group:
            piece = ids.tolist() + [sep_id]
            if pack == "none":
                flush()
            while piece:
                room = body - len(cur)
                if len(piece) <= room:
                    cur.extend(piece)
                    piece = []
                elif pack == "lines" and cur and len(piece) <= body:
                    flush()  # the line fits in a sequence of its own: do not cut it
                else:
                    cur.extend(piece[:room])
                    piece = piece[room:]
                    flush()
        flush()
    return seqs


def data_fingerprint(data: MlmDataConfig, vocab_path: Path) -> str:
    """What the packed training sequences depend on, hashed: the vocabulary file, the packing settings, the
    sources and every source file's path under ``data.root`` and content. The same on every machine that
    holds the same files (mtimes and absolute paths do not enter), so a cache and a stage's place in the
    data (:func:`data_position`) carry over from one machine to the next."""
    import hashlib
    import os

    from training.data import expand_paths

    h = hashlib.sha256(Path(vocab_path).read_bytes())
    h.update(json.dumps([data.max_length, data.pack, data.heldout_fraction]).encode())
    for source in data.sources:
        h.update(json.dumps(dataclasses.asdict(source), sort_keys=True).encode())
        for path in expand_paths(source.paths, root=data.root):
            h.update(os.path.relpath(path, data.root).replace(os.sep, "/").encode())
            with open(path, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def sequence_cache(data: MlmDataConfig, fingerprint: str) -> Path:
    """Where the packed sequences of this data, vocabulary and packing (:func:`data_fingerprint`) are cached."""
    return Path(data.cache_dir) / f"packed-{fingerprint}.npz"


def data_position(batches, *, fingerprint: str, training: TrainingConfig, sequences: int) -> dict:
    """Where a run stopped in its data: the epoch and batch of the seeded order :class:`EpochBatches` draws,
    with what that order depends on. A later stage started from the released encoder continues there
    (:func:`continue_data`) instead of seeing the same batches again."""
    state = batches.state_dict()
    return {"fingerprint": fingerprint, "sequences": sequences, "seed": training.seed,
            "batch_size": training.batch_size, "batch_tokens": training.batch_tokens,
            "epoch": int(state["epoch"]), "index": int(state["index"])}


def continue_data(batches, init: str, *, fingerprint: str, training: TrainingConfig,
                  sequences: int) -> dict | None:
    """Move fresh ``batches`` to where the stage behind ``init`` stopped (``encoder.json`` ``data_position``)
    when that stage drew the same order (same data, seed and batch shape); returns the position, or None (with
    the reason logged) when the run starts at the beginning of the data."""
    record = Path(init) / RECORD_FILE if init else None
    if record is None or not record.is_file():
        return None
    pos = json.loads(record.read_text(encoding="utf-8")).get("data_position")
    if not pos:
        log.info("%s records no data position: the data starts at its beginning", record)
        return None
    here = data_position(batches, fingerprint=fingerprint, training=training, sequences=sequences)
    if differ := [k for k in ("fingerprint", "sequences", "seed", "batch_size", "batch_tokens")
                  if pos.get(k) != here[k]]:
        log.warning("%s stopped in another data order (%s differ): this stage starts the data over",
                    record, ", ".join(f"{k} {pos.get(k)!r} -> {here[k]!r}" for k in differ))
        return None
    state = batches.state_dict()
    state.update(epoch=pos["epoch"], index=pos["index"])
    batches.load_state_dict(state)
    log.info("continuing the data where %s stopped: epoch %d, batch %d of %d", init, pos["epoch"],
             pos["index"], batches.steps_per_epoch)
    return pos


def _data_start(out: Path, resuming: bool, start: Callable[[], dict | None]) -> dict | None:
    """Where this stage's data began (``{"epoch", "index"}``, or None: at the beginning), kept in the run
    directory at the first start: a resumed run gets its batches from the checkpoint, and model.init's
    record may have been replaced since (a later stage released into the same folder)."""
    path = out / DATA_START_FILE
    if resuming and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["started_at"]
    pos = start()
    started_at = pos and {k: pos[k] for k in ("epoch", "index")}
    write_json(path, {"started_at": started_at})
    return started_at


def save_sequences(path: Path, train: Sequence[np.ndarray], held: Sequence[np.ndarray], read: dict) -> None:
    """The packed sequences (one flat array + lengths each) and what reading the texts found."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    arrays = {"read": np.frombuffer(json.dumps(read).encode(), dtype=np.uint8)}
    for name, seqs in (("train", train), ("held", held)):
        arrays[name] = np.concatenate(seqs) if len(seqs) else np.zeros(0, np.int32)
        arrays[name + "_lengths"] = np.asarray([len(s) for s in seqs], dtype=np.int64)
    np.savez(tmp, **arrays)
    tmp.rename(path)


def load_sequences(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    with np.load(path) as z:
        out = []
        for name in ("train", "held"):
            flat, lengths = z[name], z[name + "_lengths"]
            out.append(np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else [])
        read = json.loads(z["read"].tobytes()) if "read" in z else {
            "summary": "(cached)", "train_texts": None, "heldout_texts": None, "unk_token_rate": None,
            "unk_char_rate": None}
    return out[0], out[1], read


class _Texts:
    """The training and held-out texts of ``[data]``, read on first use (held out by content hash)."""

    def __init__(self, data: MlmDataConfig, report_path: Path):
        self.data, self.report_path, self._train, self._held = data, report_path, None, None
        self.report = ReadReport()

    def _read(self) -> None:
        records = list(read_texts(self.data.sources, self.report, root=self.data.root))
        self.report.write(self.report_path)  # every unreadable record, file:line, whatever on_error says
        self.report.check(self.data.on_error)
        held = [is_heldout(r.text, self.data.heldout_fraction) for r in records]
        self._train = [r for r, h in zip(records, held) if not h]
        self._held = [r for r, h in zip(records, held) if h]
        log.info("read %s; %d texts for training, %d held out", self.report.summary(), len(self._train),
                 len(self._held))

    @property
    def train(self) -> list[TextRecord]:
        if self._train is None:
            self._read()
        return self._train

    @property
    def held(self) -> list[TextRecord]:
        if self._held is None:
            self._read()
        return self._held

    def release(self) -> None:
        self._train, self._held = [], []


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def eval_batches(seqs: Sequence[np.ndarray], collate: MlmCollator, *, batch_size: int,
                 seed: int) -> list[dict]:
    """Held-out batches masked once with a fixed seed: every evaluation sees the same masks."""
    g = torch.Generator().manual_seed(seed)
    return [collate(list(seqs[i: i + batch_size]), g) for i in range(0, len(seqs), batch_size)]


@torch.no_grad()
def evaluate_mlm(model: RoFormerForMlm, batches: Sequence[dict], device: torch.device | str = "cpu") -> dict:
    """Masked-token cross-entropy, accuracy and perplexity over fixed held-out batches."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for batch in batches:
        batch = to_device(batch, device)
        logits, _ = model(**batch)  # (N, V)
        targets = batch["targets"][batch["targets"] != IGNORE]  # (N,)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        correct += int((logits.argmax(-1) == targets).sum())
        n += len(targets)
    model.train(was_training)
    loss = loss_sum / max(n, 1)
    return {"loss": loss, "accuracy": correct / max(n, 1), "perplexity": math.exp(min(loss, 50.0)),
            "masked_tokens": n}


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


def evaluate_pretraining(model: RoFormerForMlm | RoFormerForElectra, batches: Sequence[dict],
                         device: torch.device | str = "cpu") -> dict:
    """Held-out metrics of either objective (see :func:`evaluate_mlm`, :func:`training.electra.evaluate_electra`)."""
    if isinstance(model, RoFormerForElectra):
        return evaluate_electra(model, batches, device)
    return evaluate_mlm(model, batches, device)


def train_mlm(cfg: MlmConfig, *, resume: bool = False) -> FitResult:
    """Pre-train as configured; writes everything under ``cfg.output.dir`` (see :func:`training.loop.fit`)."""
    if not cfg.data.sources:
        raise ValueError("no [[data.sources]] configured")
    if cfg.training.data_from and cfg.data.continue_position:
        raise ConfigError("training.data_from and data.continue_position both say where the data starts: set "
                          "data.continue_position = false to start from the checkpoint's position instead of the "
                          "released encoder's")
    run = open_run(cfg.output.dir, cfg.training, resume=resume)
    out = run.out

    texts = _Texts(cfg.data, out / "data_report.json")  # read on first use: not at all when the vocabulary and packed sequences are cached
    tokenizer, vocab_path = tokenizer_for(cfg.model.init, cfg.vocab, out, lambda: (r.text for r in texts.train),
                                          resuming=run.resuming)
    fingerprint = data_fingerprint(cfg.data, vocab_path)
    cache = sequence_cache(cfg.data, fingerprint) if cfg.data.cache_dir else None
    if cache is not None and cache.is_file():
        train_seqs, held_seqs, read = load_sequences(cache)
        log.info("packed sequences from %s (%s)", cache, read["summary"])
    else:
        def sequences(recs):
            return pack_sequences(tokenize_records(tokenizer, recs), max_length=cfg.data.max_length,
                                  cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, pack=cfg.data.pack)

        unk = unk_rate(tokenizer, [r.text for r in texts.held]) if texts.held else None
        if unk is not None:
            log.info("held-out %s", unk)
        read = {"summary": texts.report.summary(), "train_texts": len(texts.train), "heldout_texts": len(texts.held),
                "unk_token_rate": unk.token_rate if unk else None, "unk_char_rate": unk.char_rate if unk else None}
        train_seqs, held_seqs = sequences(texts.train), sequences(texts.held)
        texts.release()  # the texts are packed: free them before training
        if cache is not None:
            save_sequences(cache, train_seqs, held_seqs, read)

    model = build_model(cfg.model, tokenizer.vocab_size, objective=cfg.mlm.objective,
                        electra=cfg.electra).to(run.device)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=model.cfg))  # as built
    write_run_config(out, cfg, resuming=run.resuming)
    check_length(cfg.data.max_length, model.encoder)

    n_tokens = sum(len(s) for s in train_seqs)
    collate = MlmCollator(tokenizer, cfg.mlm)
    batches = EpochBatches(train_seqs, collate=collate, batch_size=cfg.training.batch_size,
                           batch_tokens=cfg.training.batch_tokens, seed=cfg.training.seed)
    position = dict(fingerprint=fingerprint, training=cfg.training, sequences=len(train_seqs))
    started_at = _data_start(out, run.resuming, lambda: continue_data(batches, cfg.model.init, **position)
                             if cfg.data.continue_position else None)
    if cfg.data.prefetch:
        batches = Prefetch(batches, depth=cfg.data.prefetch)
    per_epoch = batches.steps_per_epoch
    total = cfg.training.total_steps(per_epoch)
    log.info("%d training sequences (%s tokens, %d steps per epoch), %d held-out sequences; %d steps; "
             "model %.2fM parameters", len(train_seqs), f"{n_tokens:,}", per_epoch, len(held_seqs), total,
             sum(p.numel() for p in model.parameters()) / 1e6)
    held_batches = eval_batches(held_seqs, collate, batch_size=2 * cfg.training.batch_size,
                                seed=cfg.training.seed + 1)

    result = fit(model, batches, cfg.training, out_dir=out, total_steps=total, device=run.device,
                 save_model=lambda d: model.save_pretrained(d, tokenizer_file=vocab_path),
                 evaluate=(lambda: evaluate_pretraining(model, held_batches, run.device)) if held_batches else None,
                 metric="loss", resume_from=run.resume_from)
    finish_run(run, result, {
        "data": {"read": read["summary"], "train_texts": read["train_texts"], "heldout_texts": read["heldout_texts"],
                 "train_sequences": len(train_seqs), "train_tokens": n_tokens,
                 "heldout_sequences": len(held_seqs), "steps_per_epoch": per_epoch,
                 "started_at": started_at},
        "data_position": data_position(batches, **position),
        "vocab": {"size": tokenizer.vocab_size, "heldout_unk_token_rate": read["unk_token_rate"],
                  "heldout_unk_char_rate": read["unk_char_rate"]},
        "config": to_dict(cfg)}, kept="model")
    return result
