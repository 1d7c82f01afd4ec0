"""The main job (fastnets.models, fastnets.demo, `python -m fastnets demo`): both builds of every
model agree, a short run on the embedded digits beats chance by far, checkpoints round-trip and
load across builds, and two gloo processes under torchrun stay identical replicas."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastnets import demo, models
from fastnets.__main__ import main
from fastnets.data import load_mnist

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return load_mnist()


@pytest.mark.parametrize("name", list(models.MODELS))
def test_both_builds_agree(name):
    torch.manual_seed(0)
    ours, reference = models.build(name, "fastnets"), models.build(name, "torch")
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    x = torch.rand(7, 1, 28, 28)
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)  # deterministic paths
    if any(isinstance(m, torch.nn.Dropout) for m in reference.modules()):
        # Train mode: dropout draws differ, the distributions do not.
        ours.train(), reference.train()
        with torch.no_grad():
            a = torch.stack([ours(x[:1]) for _ in range(400)])
            b = torch.stack([reference(x[:1]) for _ in range(400)])
        spread = torch.sqrt((a.var(0) + b.var(0)) / 400)
        assert ((a.mean(0) - b.mean(0)).abs() <= 6 * spread + 1e-6).all()
        assert torch.allclose(a.std(0), b.std(0), rtol=0.25, atol=1e-4)


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        models.build("vgg")
    with pytest.raises(ValueError, match="layers"):
        models.mnist_cnn("keras")


def test_short_training_beats_chance_and_checkpoints_load_across_builds(digits, tmp_path):
    report = demo.compare_builds("lenet5", digits, epochs=1, lr=1e-3, out_dir=tmp_path, progress=False)
    fastnets_run, torch_run = report["runs"]
    assert fastnets_run["test_accuracy"][-1] > 80 and torch_run["test_accuracy"][-1] > 80  # chance: 10%
    assert fastnets_run["saved_bytes"] < torch_run["saved_bytes"]  # 1-byte argmax, no pre-pool activations
    checks = report["checkpoints"]
    assert checks["fastnets_reloaded"] == checks["fastnets_trained"]
    assert abs(checks["torch_checkpoint_in_fastnets_build"] - checks["torch_trained"]) <= 0.2
    assert Path(checks["fastnets_path"]).is_file() and Path(checks["torch_path"]).is_file()
    text = demo.table(report)
    assert "| fastnets |" in text and "| torch.nn |" in text and "torch.nn checkpoint loaded" in text


def test_dbn_pretrains_with_each_builds_rbms_then_fine_tunes(digits):
    report = demo.compare_builds("dbn", digits, epochs=1, lr=1e-3, progress=False, pretrain_epochs=1)
    fastnets_run, torch_run = report["runs"]
    for run in report["runs"]:
        assert run["pretrain_seconds"] > 0 and len(run["pretrain_errors"]) == 2
        assert run["test_accuracy"][-1] > 75  # chance: 10%
    # the same initial RBM weights, statistically equivalent sampling: close reconstruction errors
    for ours, theirs in zip(fastnets_run["pretrain_errors"], torch_run["pretrain_errors"]):
        assert abs(ours - theirs) < 0.05 * theirs
    assert "DBN pre-training, 1 epochs of CD-1 per layer" in demo.table(report)


def test_lstm_classifier_learns_and_keeps_less_for_backward(digits):
    report = demo.compare_builds("lstm", digits, epochs=1, lr=3e-3, progress=False)
    fastnets_run, torch_run = report["runs"]
    assert fastnets_run["test_accuracy"][-1] > 40 and torch_run["test_accuracy"][-1] > 40  # chance: 10%
    assert fastnets_run["saved_bytes"] < torch_run["saved_bytes"]  # activated gates and cell states only


def test_torch_rbm_matches_fastnets_rbm_given_the_same_samples(monkeypatch):
    # TorchRBM's CD-1 from the hidden sample fastnets drew equals fastnets.nn.RBM's gradients.
    torch.manual_seed(0)
    ours, theirs = fastnets_rbm(), models.TorchRBM(20, 8).double()
    theirs.load_state_dict(ours.state_dict())
    v = torch.bernoulli(torch.full((16, 20), 0.3, dtype=torch.float64))
    ours.contrastive_divergence(v, generator=torch.Generator().manual_seed(1))
    h = ours.sample_h(v, generator=torch.Generator().manual_seed(1))[1]
    monkeypatch.setattr(torch, "bernoulli", lambda p, generator=None: h)
    theirs.contrastive_divergence(v)
    for mine, reference in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine.grad, reference.grad)


def fastnets_rbm():
    import fastnets

    rbm = fastnets.nn.RBM(20, 8, dtype=torch.float64)
    with torch.no_grad():
        rbm.weight.normal_(0, 0.5)
        rbm.hidden_bias.normal_(0, 0.5)
        rbm.visible_bias.normal_(0, 0.5)
    return rbm


def test_saved_for_backward_counts_the_batch_not_the_data_set(digits):
    torch.manual_seed(0)
    saved = demo.saved_for_backward_bytes(models.softmax_regression(), digits.train_images[:50],
                                          digits.train_labels[:50])
    assert 50 * 784 * 4 <= saved <= 50 * 784 * 4 + 10_000  # the linear layer's input, and the loss's few


def test_cli_refuses_distributed_outside_torchrun(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert main(["demo", "--distributed", "--device", "cpu"]) == 2
    assert "runs under torchrun" in capsys.readouterr().err


def torchrun_demo(out_dir: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "fastnets", "demo", "--distributed", "--device", "cpu", "--threads", "1", "--out", str(out_dir),
               *args]
    return subprocess.run(command, cwd=out_dir.parent, env=env, capture_output=True, text=True, timeout=600)


def test_data_parallel_replicas_stay_identical(tmp_path):
    """Two CPU processes with gloo: `torchrun --nproc_per_node 2 -m fastnets demo --distributed`."""
    (tmp_path / "ddp").mkdir()
    done = torchrun_demo(tmp_path / "ddp", "--model", "lenet5", "--epochs", "2", "--lr", "1e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "demo.json").read_text())
    assert report["world_size"] == 2 and report["replicas_identical"]
    for run in report["runs"]:
        assert run["train_loss"][1] < run["train_loss"][0] and run["test_accuracy"][-1] > 80
    assert "replicas identical: True" in done.stdout


def test_data_parallel_equals_one_process(tmp_path):
    """Each of two ranks takes half of every batch and DDP averages their gradients: the model
    (no dropout) ends where one process training on the whole batches ends."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    done = torchrun_demo(tmp_path / "two", "--model", "softmax", "--epochs", "1", "--lr", "1e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["demo", "--device", "cpu", "--model", "softmax", "--epochs", "1", "--lr", "1e-3",
                 "--out", str(tmp_path / "one")]) == 0
    for build in ("fastnets", "torch.nn"):
        one = torch.load(tmp_path / "one" / f"softmax-{build}.pt")
        two = torch.load(tmp_path / "two" / f"softmax-{build}.pt")
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
