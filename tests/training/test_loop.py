"""The generic loop's parts: schedule, weight-decay groups, resumable batches."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from training.config import RESOLVED_FILE, ConfigError, TrainingConfig
from training.batches import EpochBatches
from training.checkpoints import Checkpoints
from training.loop import (
    build_scheduler,
    lr_factor,
    param_groups,
    setup_torch,
    write_run_config,
)


def test_lr_schedules():
    def f(step, schedule, **kw):
        return lr_factor(step, total=110, warmup=10, schedule=schedule, **kw)

    assert [f(s, "linear") for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert f(60, "linear") == pytest.approx(0.5) and f(110, "linear") == 0.0
    assert f(60, "cosine") == pytest.approx(0.5) and f(110, "cosine") == pytest.approx(0.0)
    assert f(110, "linear", min_ratio=0.1) == pytest.approx(0.1)
    assert f(100, "constant") == 1.0


def test_scheduler_lr_per_step():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, TrainingConfig(lr=1.0, warmup_steps=2, max_steps=4), total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 0.5, 0.0])  # step 1 already learns (no wasted lr=0 step)


def test_no_weight_decay_on_bias_and_layernorm():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.01)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[1].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].bias), id(model[2].weight), id(model[2].bias)}
    assert no_decay["weight_decay"] == 0.0


def _collate(examples, generator):
    ids = torch.tensor([e[0] for e in examples])
    return {"input_ids": ids, "noise": torch.rand(len(examples), generator=generator)}


@pytest.mark.parametrize("budget", [0, 40])
def test_epoch_batches_cover_each_example_once(budget):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, 101)
    examples = [[i] * int(n) for i, n in enumerate(lengths)]
    b = EpochBatches(examples, collate=_collate, batch_size=8, batch_tokens=budget, bucket=2 if budget else 0,
                     seed=3)
    for epoch in range(2):
        seen = []
        for idx in b.plan(epoch):
            seen += list(idx)
            if budget:
                assert lengths[idx].max() * len(idx) <= budget
        assert sorted(seen) == list(range(101))  # nothing dropped, nothing twice
    assert b.plan(0)[0].tolist() != b.plan(1)[0].tolist()  # reshuffled per epoch
    assert b.steps_per_epoch == (math.ceil(101 / 8) if not budget else len(b.plan(0)))


def test_epoch_batches_resume_exactly():
    examples = [[i] for i in range(10)]
    a = EpochBatches(examples, collate=_collate, batch_size=3, seed=1)
    for _ in range(5):  # into the second epoch
        next(a)
    state = a.state_dict()
    want = [next(a) for _ in range(6)]
    b = EpochBatches(examples, collate=_collate, batch_size=3, seed=1)
    b.load_state_dict(state)
    got = [next(b) for _ in range(6)]
    for w, g in zip(want, got):
        assert torch.equal(w["input_ids"], g["input_ids"]) and torch.equal(w["noise"], g["noise"])
    assert b.epoch == pytest.approx(2 + 3 / 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where there is no GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        setup_torch(TrainingConfig(device="cuda"))


class _Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, input_ids, targets):
        loss = ((self.linear(input_ids).squeeze(-1) - targets) ** 2).mean()
        return None, loss


def _regression_batches(seed=0):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 3, generator=g)
    ys = xs @ torch.tensor([1.0, -2.0, 0.5])

    def collate(idx, generator):
        return {"input_ids": xs[idx], "targets": ys[idx]}

    return EpochBatches(list(range(64)), lengths=[1] * 64, collate=collate, batch_size=8, seed=seed)


def test_fit_logs_checkpoints_and_stops_early(tmp_path):
    import json

    from training.loop import fit

    cfg = TrainingConfig(lr=0.05, max_steps=50, eval_every=2, checkpoint_every=4, keep_checkpoints=2,
                         patience=2, progress="off")
    scores = iter([3.0, 2.0, 2.5, 2.6, 1.0])  # best at the 2nd eval, then two without improvement
    saved = []

    def run():
        torch.manual_seed(0)
        return fit(_Regression(), _regression_batches(), cfg, out_dir=tmp_path, total_steps=50,
                   save_model=lambda d: saved.append(d.name), evaluate=lambda: {"loss": next(scores)},
                   resume_from=Checkpoints(tmp_path / "checkpoints").latest())

    result = run()
    assert result.stopped_early and result.step == 8 and result.best == 2.0
    assert [p.name for p in Checkpoints(tmp_path / "checkpoints").all()] == ["step-00000004", "step-00000008"]
    assert saved.count("best") == 2 and saved[-1] == "model"
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" not in r] == list(range(1, 9))
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped_early"] is True
    again = run()  # resuming a run that stopped early trains no further
    assert again.step == 8 and again.stopped_early


@dataclasses.dataclass(frozen=True)
class _Section:
    a: int = 1
    added: str = "auto"  # a key that runs started by an older version do not have in their saved config


@dataclasses.dataclass(frozen=True)
class _RunConfig:
    section: _Section = dataclasses.field(default_factory=_Section)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)


def test_resume_compares_configs_key_by_key_with_defaults_for_new_keys(tmp_path):
    write_run_config(tmp_path, _RunConfig(), resuming=False)
    saved = tmp_path / RESOLVED_FILE
    saved.write_text(saved.read_text().replace('added = "auto"\n', ""))  # as an older version wrote it
    write_run_config(tmp_path, _RunConfig(training=TrainingConfig(threads=3)), resuming=True)  # may change
    with pytest.raises(ConfigError, match=r"section\.added"):
        write_run_config(tmp_path, _RunConfig(section=_Section(added="flat")), resuming=True)
    with pytest.raises(ConfigError, match=r"training\.lr"):
        write_run_config(tmp_path, _RunConfig(training=TrainingConfig(lr=1.0)), resuming=True)
    saved.write_text(saved.read_text().replace("[section]\n", "[section]\nremoved = 2\n"))
    with pytest.raises(ConfigError, match=r"section\.removed"):
        write_run_config(tmp_path, _RunConfig(), resuming=True)


def test_data_from_continues_the_data_of_an_earlier_runs_checkpoint_under_its_seed_only(tmp_path):
    from training.loop import fit, open_run

    def run(out, steps, seed=0, **kw):
        seen = []
        batches = _regression_batches(seed)
        collate = batches.collate
        batches.collate = lambda idx, g: seen.append(list(idx)) or collate(idx, g)
        cfg = TrainingConfig(lr=0.05, max_steps=steps, seed=seed, eval_every=0, checkpoint_every=0,
                             progress="off", **kw)
        open_run(out, cfg, resume=False)  # as the trainers do: data_from is checked before any preparation
        write_run_config(out, _RunConfig(training=cfg), resuming=False)
        fit(_Regression(), batches, cfg, out_dir=out, total_steps=steps, save_model=lambda d: None)
        return seen

    straight = run(tmp_path / "straight", 12)  # 12 batches of 8 over 64 examples: 1.5 epochs
    first = run(tmp_path / "first", 5)
    then = tmp_path / "first" / "checkpoints" / "step-00000005"
    assert first == straight[:5]
    assert run(tmp_path / "then", 7, data_from=str(then)) == straight[5:]  # into the second epoch, exactly
    assert run(tmp_path / "fresh", 3) == straight[:3]  # without it: the data from its beginning
    with pytest.raises(ConfigError, match=r"training\.seed \(0 there, 1 here\)"):
        run(tmp_path / "other_seed", 2, seed=1, data_from=str(then))
    assert not (tmp_path / "other_seed").exists()  # refused before the run's folder or any data
    with pytest.raises(ConfigError, match=r"batch_size"):
        run(tmp_path / "other_batch", 2, data_from=str(then), batch_size=4)
    with pytest.raises(ConfigError, match=r"not a checkpoint folder"):
        run(tmp_path / "not_a_checkpoint", 2, data_from=str(tmp_path / "first"))


def test_heap_growth_limits_apply_on_glibc():
    import platform

    from training.loop import limit_heap_growth

    assert limit_heap_growth() is (platform.libc_ver()[0] == "glibc")


class _Embedded(nn.Module):
    """Token embeddings -> mean -> linear: a model whose loss is not linear in the embeddings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tok_emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, input_ids, targets):
        pred = torch.tanh(self.tok_emb(input_ids)).mean(1) @ self.out.weight.T
        return None, ((pred.squeeze(-1) + self.out.bias - targets) ** 2).mean()


def test_fgm_adds_the_gradient_at_embeddings_moved_along_their_gradient_and_restores_them():
    from training.batches import EpochBatches
    from training.loop import perturbed, train_steps

    ids = torch.tensor([[1, 2, 3], [4, 5, 5], [6, 7, 1], [2, 2, 9]])
    targets = torch.tensor([0.5, -1.0, 2.0, 0.0])
    batches = lambda: EpochBatches([0], lengths=[1], batch_size=1, seed=0,  # noqa: E731
                                   collate=lambda idx, g: {"input_ids": ids, "targets": targets})
    eps = 0.7

    # by hand: clean gradient, then the gradient at tok_emb + eps * g / |g|, summed
    ref = _Embedded()
    w0 = ref.tok_emb.weight.detach().clone()
    _, loss = ref(ids, targets)
    loss.backward()
    g = ref.tok_emb.weight.grad.clone()
    with perturbed(ref.tok_emb.weight, eps) as moved:
        assert moved
        moved_by = ref.tok_emb.weight.detach() - w0
        assert torch.allclose(moved_by.norm(), torch.tensor(eps))
        assert torch.allclose(moved_by, eps * g / g.norm())
        _, adv = ref(ids, targets)
        adv.backward()
    assert torch.equal(ref.tok_emb.weight.detach(), w0)  # restored exactly
    expected = {n: p.grad.clone() for n, p in ref.named_parameters()}
    assert not torch.allclose(expected["tok_emb.weight"], 2 * g)  # the second gradient is not the first

    for adversarial, want in ((eps, expected), (0.0, None)):
        model = _Embedded()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights where they were
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        info = next(train_steps(model, opt, sched, batches(), max_steps=1, clip=0, adversarial=adversarial))
        assert info.loss == pytest.approx(loss.item())  # the clean loss is reported
        got = {n: p.grad for n, p in model.named_parameters()}
        if want is None:
            assert torch.allclose(got["tok_emb.weight"], g)
        else:
            assert all(torch.allclose(got[n], want[n], atol=1e-6) for n in want)
        assert torch.equal(model.tok_emb.weight.detach(), w0)

    # a zero gradient moves nothing
    flat = nn.Embedding(3, 2)
    flat.weight.grad = torch.zeros_like(flat.weight)
    with perturbed(flat.weight, 1.0) as moved:
        assert not moved
    with pytest.raises(ValueError, match="tok_emb"):
        next(train_steps(_Regression(), torch.optim.SGD(_Regression().parameters(), lr=0.1), None,
                         _regression_batches(), max_steps=1, adversarial=1.0))
    with pytest.raises(ValueError, match="training.adversarial"):
        TrainingConfig(adversarial=-1)
