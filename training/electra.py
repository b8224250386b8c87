"""ELECTRA-style replaced-token detection for pre-training a RoFormer encoder.

Clark et al. 2020 ("ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators"):
a small masked-LM *generator* fills the masked positions with samples from its own predictions, and
the encoder we keep, the *discriminator*, tells for **every** token whether it is the original or a
replacement. The discriminator learns from all tokens instead of the 15 % that MLM predicts, which
is why ELECTRA-Small beats BERT-Small at a fraction of the compute.

Read top to bottom: :class:`ElectraConfig` (the ``[electra]`` section) -> the discriminator head ->
:class:`RoFormerForElectra` (generator + discriminator, token embeddings shared, loss
``mlm + disc_weight * bce``) -> saving: the discriminator is a plain Hugging Face RoFormer folder
(what fine-tuning loads), the generator a ``RoFormerForMaskedLM`` folder in ``generator/`` beside it
(what a later pre-training stage continues from).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.mlm import IGNORE, RoFormerForMlm
from models.roformer import ACTIVATIONS, RoFormerConfig, RoFormerEncoder
from training.loop import to_device

GENERATOR_DIR = "generator"


@dataclass(frozen=True)
class ElectraConfig:
    """``[electra]``: the generator's size (its token embeddings are the discriminator's) and the
    weight of the discriminator's loss (50 in the paper: its per-token BCE is much smaller than MLM's)."""

    generator_hidden: int = 128
    generator_layers: int = 0  # 0 = as many as the discriminator
    generator_heads: int = 2
    generator_intermediate: int = 512
    disc_weight: float = 50.0
    temperature: float = 1.0  # sampling temperature of the generator's replacements

    def __post_init__(self):
        if self.disc_weight <= 0:
            raise ValueError(f"electra.disc_weight must be > 0, got {self.disc_weight}")
        if self.temperature <= 0:
            raise ValueError(f"electra.temperature must be > 0, got {self.temperature}")

    def generator_config(self, disc: RoFormerConfig) -> RoFormerConfig:
        return dataclasses.replace(
            disc, hidden_size=self.generator_hidden, num_attention_heads=self.generator_heads,
            num_hidden_layers=self.generator_layers or disc.num_hidden_layers,
            intermediate_size=self.generator_intermediate, embedding_size=disc.emb_dim)


class DiscriminatorHead(nn.Module):
    """dense -> activation -> one logit per token (``ElectraDiscriminatorPredictions``)."""

    def __init__(self, cfg: RoFormerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.out = nn.Linear(cfg.hidden_size, 1)
        for lin in (self.dense, self.out):
            nn.init.normal_(lin.weight, std=cfg.initializer_range)
            nn.init.zeros_(lin.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.dense(hidden))).squeeze(-1)  # (B, T)


class RoFormerForElectra(nn.Module):
    """Generator (a small :class:`training.mlm.RoFormerForMlm`) + discriminator (the encoder we keep)."""

    def __init__(self, encoder: RoFormerEncoder, generator: nn.Module, cfg: ElectraConfig):
        super().__init__()
        self.encoder, self.generator, self.electra = encoder, generator, cfg
        self.disc_head = DiscriminatorHead(encoder.cfg)
        generator.encoder.tok_emb = encoder.tok_emb  # shared, as in the paper

    @property
    def cfg(self) -> RoFormerConfig:
        return self.encoder.cfg

    @classmethod
    def build(cls, encoder: RoFormerEncoder, cfg: ElectraConfig) -> RoFormerForElectra:
        return cls(encoder, RoFormerForMlm(RoFormerEncoder(cfg.generator_config(encoder.cfg))), cfg)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, targets=None,
                sample_generator: torch.Generator | None = None):
        """``input_ids`` masked as for MLM, ``targets`` the original ids at masked positions (-100
        elsewhere). Returns ``(parts, loss)``: parts holds the generator's logits at the masked
        positions, the discriminator's logits and labels (1 = replaced) and the two losses."""
        if targets is None:
            raise ValueError("ELECTRA needs targets (the original ids at the masked positions)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        selected = targets != IGNORE  # (B, T)
        gen_logits, gen_loss = self.generator(input_ids, attention_mask, token_type_ids, targets=targets)
        with torch.no_grad():  # replacements: samples from the generator, no gradient through them
            probs = F.softmax(gen_logits.detach().float() / self.electra.temperature, dim=-1)  # (N, V)
            sampled = (torch.multinomial(probs, 1, generator=sample_generator).squeeze(-1)
                       if probs.shape[0] else targets[selected])
            disc_ids = input_ids.clone()
            disc_ids[selected] = sampled
            original = torch.where(selected, targets, input_ids)
            labels = (disc_ids != original).float()  # (B, T)
        hidden = self.encoder(disc_ids, attention_mask, token_type_ids)  # (B, T, H)
        disc_logits = self.disc_head(hidden)  # (B, T)
        real = attention_mask.bool()
        disc_loss = F.binary_cross_entropy_with_logits(disc_logits.float()[real], labels[real])
        loss = gen_loss + self.electra.disc_weight * disc_loss
        parts = {"gen_logits": gen_logits, "disc_logits": disc_logits, "labels": labels, "real": real,
                 "gen_loss": gen_loss.detach(), "disc_loss": disc_loss.detach()}
        return parts, loss

    # saving -----------------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path, *, tokenizer_file: str | Path | None = None) -> None:
        """``path``: the discriminator as a Hugging Face RoFormer folder (+ ``electra_head.json``
        recording the objective); ``path/generator``: the generator as a RoFormerForMaskedLM folder."""
        from safetensors.torch import save_file

        path = Path(path)
        self.encoder.save_pretrained(path)
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        cfg["architectures"] = ["RoFormerModel"]
        (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        head = {f"discriminator_predictions.{k}": v.detach().contiguous()
                for k, v in self.disc_head.state_dict().items()}
        save_file(head, str(path / "electra_head.safetensors"), metadata={"format": "pt"})
        (path / "electra.json").write_text(json.dumps(dataclasses.asdict(self.electra), indent=2) + "\n",
                                           encoding="utf-8")
        self.generator.save_pretrained(path / GENERATOR_DIR)
        if tokenizer_file is not None:
            src = Path(tokenizer_file)
            for dst in (path / src.name, path / GENERATOR_DIR / src.name):
                if src.resolve() != dst.resolve():
                    shutil.copyfile(src, dst)

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ElectraConfig, **overrides) -> RoFormerForElectra:
        """Continue a saved ELECTRA run (a new stage); a plain RoFormer folder gets a new generator."""
        from safetensors.torch import load_file

        path = Path(path)
        encoder = RoFormerEncoder.from_pretrained(path, **overrides)
        if (path / GENERATOR_DIR / "config.json").is_file():
            model = cls(encoder, RoFormerForMlm.from_pretrained(path / GENERATOR_DIR), cfg)
        else:
            model = cls.build(encoder, cfg)
        if (path / "electra_head.safetensors").is_file():
            state = load_file(str(path / "electra_head.safetensors"))
            model.disc_head.load_state_dict({k.removeprefix("discriminator_predictions."): v
                                             for k, v in state.items()})
        return model


@torch.no_grad()
def evaluate_electra(model: RoFormerForElectra, batches, device="cpu", *, seed: int = 0) -> dict:
    """Held-out generator MLM loss/accuracy and discriminator loss/accuracy (fixed masks and samples)."""
    was_training = model.training
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    gen_sum = disc_sum = 0.0
    gen_ok = gen_n = disc_ok = disc_n = replaced_ok = replaced_n = 0
    for batch in batches:
        batch = to_device(batch, device)
        parts, _ = model(**batch, sample_generator=g)
        targets = batch["targets"][batch["targets"] != IGNORE]
        gen_sum += F.cross_entropy(parts["gen_logits"].float(), targets, reduction="sum").item()
        gen_ok += int((parts["gen_logits"].argmax(-1) == targets).sum())
        gen_n += len(targets)
        real, labels = parts["real"], parts["labels"]
        logits = parts["disc_logits"].float()[real]
        disc_sum += F.binary_cross_entropy_with_logits(logits, labels[real], reduction="sum").item()
        pred = (logits > 0).float()
        disc_ok += int((pred == labels[real]).sum())
        disc_n += int(real.sum())
        rep = labels[real] == 1
        replaced_ok += int((pred[rep] == 1).sum())
        replaced_n += int(rep.sum())
    model.train(was_training)
    gen_loss, disc_loss = gen_sum / max(gen_n, 1), disc_sum / max(disc_n, 1)
    return {"loss": gen_loss + model.electra.disc_weight * disc_loss, "gen_loss": gen_loss,
            "gen_accuracy": gen_ok / max(gen_n, 1), "disc_loss": disc_loss,
            "disc_accuracy": disc_ok / max(disc_n, 1), "replaced_recall": replaced_ok / max(replaced_n, 1),
            "replaced_share": replaced_n / max(disc_n, 1), "masked_tokens": gen_n}
