"""`--optimizer muon`: Muon (torch.optim.Muon) on the decoder layers' weight matrices and AdamW on the embedding (tied
to the head) and the norms, one learning rate and schedule for both; it trains, resumes exactly, and a state written
by one optimizer is refused by the other with a message that says what to do."""

import pytest
import torch
from helpers import RandomTokens, tiny_model

from minimind.train.config import TrainConfig
from minimind.train.parallel import Dist
from minimind.train.optim import Optimizers, build_optimizer, muon_available, muon_params
from minimind.train.trainer import Trainer, TrainingError

pytestmark = pytest.mark.usefixtures("one_thread")


def tokens():
    return RandomTokens(n=48)


needs_muon = pytest.mark.skipif(not muon_available(), reason="torch.optim.Muon is in torch >= 2.9")



def config(tmp_path, **kw):
    return TrainConfig(**{**dict(device="cpu", dtype="fp32", epochs=1, batch_size=8, learning_rate=1e-2,
                                 warmup_steps=0, weight_decay=0.0, max_steps=0, log_interval=100, eval_interval=0,
                                 save_steps=0, save_interval=0, seed=0, output_dir=str(tmp_path),
                                 optimizer="muon", dropout=0.0), **kw})


def model():
    return tiny_model(vocab=200, hidden=32)


@needs_muon
def test_muon_takes_the_layer_matrices_and_adamw_the_rest():
    m = model()
    hidden, other = muon_params(m)
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in hidden} == {n for n, p in m.named_parameters()
                                              if n.startswith("model.layers.") and p.dim() == 2}
    assert {names[id(p)] for p in other} == {"model.embed_tokens.weight", "model.norm.weight"} | {
        n for n in names.values() if n.endswith("layernorm.weight")}  # lm_head is the embedding (tied)
    opt = build_optimizer(m, "muon", 1e-3, 0.1)
    assert isinstance(opt, Optimizers) and [type(o).__name__ for o in opt.optimizers] == ["Muon", "AdamW"]
    assert isinstance(build_optimizer(m, "adamw", 1e-3, 0.1), torch.optim.AdamW)
    with pytest.raises(ValueError, match="expected adamw or muon"):
        build_optimizer(m, "sgd", 1e-3, 0.1)


@needs_muon
def test_one_step_is_orthogonalised_for_matrices_and_adam_for_the_embedding(tmp_path):
    m = model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    lr = 1e-2
    trainer = Trainer(m, config(tmp_path, max_steps=1, learning_rate=lr, min_lr_ratio=1.0), tokens())
    trainer.fit()
    # Muon: the update of a (A, B) matrix is lr * 0.2 * sqrt(max(A, B)) times an (approximately) orthogonal matrix,
    # whose singular values are all near 1, where the gradient's spread over orders of magnitude.
    w = "model.layers.0.mlp.up_proj.weight"
    delta = before[w] - m.get_parameter(w).detach()
    sv = torch.linalg.svdvals(delta / (lr * 0.2 * max(delta.shape) ** 0.5))
    assert 0.5 < float(sv.min()) and float(sv.max()) < 1.5, sv
    # AdamW's first step moves each embedding entry by lr * g / |g| = lr.
    e = "model.embed_tokens.weight"
    step = (before[e] - m.get_parameter(e).detach()).abs()
    assert float(step.median()) == pytest.approx(lr, rel=1e-2)


@needs_muon
def test_muon_trains_and_resumes_exactly(tmp_path):
    straight = model()
    Trainer(straight, config(tmp_path / "a", max_steps=6), tokens()).fit()
    with torch.no_grad():
        trained, start = (float(m(tokens().data, labels=tokens().data).loss) for m in (straight, model()))
    assert trained < start - 0.15  # it learns (random tokens: little to learn in 6 steps)

    calls = {"n": 0}

    def dies_after_step_3(model, batch):  # the state is saved after step 3; the 4th step never finishes
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        out = model(batch["input_ids"], labels=batch["labels"])
        return out.loss, {}

    with pytest.raises(KeyboardInterrupt):
        Trainer(model(), config(tmp_path / "b", max_steps=6, save_steps=3), tokens(), loss_fn=dies_after_step_3).fit()
    resumed = model()
    Trainer(resumed, config(tmp_path / "b", max_steps=6, resume=str(tmp_path / "b")), tokens()).fit()
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert (a - b).abs().max() <= 1e-6, name


@needs_muon
def test_resume_with_the_other_optimizer_is_refused(tmp_path):
    Trainer(model(), config(tmp_path, max_steps=1), tokens()).fit()  # a Muon state
    with pytest.raises(ValueError, match=r"Muon \+ AdamW, this run uses AdamW; resume with the --optimizer"):
        Trainer(model(), config(tmp_path, max_steps=2, optimizer="adamw", resume=str(tmp_path)), tokens()).fit()
    Trainer(model(), config(tmp_path / "adamw", max_steps=1, optimizer="adamw"), tokens()).fit()
    with pytest.raises(ValueError, match=r"AdamW, this run uses Muon \+ AdamW"):
        Trainer(model(), config(tmp_path / "adamw", max_steps=2, resume=str(tmp_path / "adamw")), tokens()).fit()


def test_optimizer_flag(tmp_path):
    from minimind.cli.train import parse_args

    assert parse_args([]).optimizer == "adamw"  # the seed's optimizer unless asked
    assert parse_args(["--optimizer", "muon"]).optimizer == "muon"
    with pytest.raises(SystemExit):
        parse_args(["--optimizer", "sgd"])


def test_muon_is_refused_on_fsdp_shards(tmp_path):
    with pytest.raises(TrainingError, match="does not run on FSDP shards"):
        Trainer(model(), config(tmp_path, fsdp=True), tokens(), dist_info=Dist(rank=0, world=2))
