"""Network kinds (network.type: lora, lokr, loha): each starts as an exact no-op, trains through its own
backward, writes the keys sd-scripts and ComfyUI load, and is patched in previews with the delta the
published formulas give (written out here independently of animad's code)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from animad import network_shapes
from animad.anima.files import ModelFiles
from animad.anima.pipeline import Anima
from animad.config.job import JobConfig, NetworkConfig, parse_job
from animad.config.problems import Problems
from animad.errors import UserError
from animad.train.networks import kind_named
from animad.train.networks.loha import LoHaModule
from animad.train.networks.lokr import KronLinear, LoKrModule
from animad.train.networks.network import build_network, network_from_state, read_network_file

KINDS = ("lora", "lokr", "loha")


def model_files(models) -> ModelFiles:
    return ModelFiles(models["dit"], models["text_encoder"], models["vae"], models["tokenizers"] / "qwen3",
                      models["tokenizers"] / "t5")


@pytest.fixture(scope="module")
def anima(tiny_models):
    model = Anima(model_files(tiny_models), "cpu")
    model.load_dit()
    return model


def reference_delta(kind: str, state: dict, name: str) -> torch.Tensor:
    """The delta ComfyUI's weight adapters add at strength 1, from the published formulas:
    lora  up @ down * alpha / rank;
    lokr  kron(w1, w2) with w2 = w2_a @ w2_b scaled alpha / rank(w2_b), or a full w2 at scale 1;
    loha  (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank(w1_b)."""
    t = {k[len(name) + 1:]: v.double() for k, v in state.items() if k.startswith(name + ".")}
    if kind == "lora":
        return t["lora_up.weight"] @ t["lora_down.weight"] * t["alpha"] / t["lora_down.weight"].shape[0]
    if kind == "lokr":
        if "lokr_w2" in t:
            return torch.kron(t["lokr_w1"], t["lokr_w2"])
        return torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]) * t["alpha"] / t["lokr_w2_b"].shape[0]
    return (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * t["alpha"] / t["hada_w1_b"].shape[0]


@pytest.mark.parametrize("kind", KINDS)
def test_the_delta_is_exactly_zero_at_step_zero(anima, kind):
    linears = {t.name: t.linear for t in anima.lora_targets(NetworkConfig())}
    before = {name: linear(torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(1)))
              for name, linear in linears.items()}
    network = build_network(anima, NetworkConfig(type=kind, dim=4, alpha=2))
    try:
        assert set(network.loras) == set(linears)
        for name, module in network.loras.items():
            assert torch.count_nonzero(module.delta()) == 0, name
            after = linears[name](torch.randn(3, linears[name].in_features, generator=torch.Generator().manual_seed(1)))
            assert torch.equal(after, before[name]), name  # the wrapped linear gives the very same numbers
        trained = [p for p in network.parameters() if p.requires_grad]
        assert trained and any(p.abs().sum() > 0 for p in trained)  # zero by a zero factor, not by nothing
    finally:
        network.detach_all()


def randomised(network, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {k: (v.float() if k.endswith(".alpha") else torch.randn(v.shape, generator=generator) * 0.2)
            for k, v in network.state_dict().items()}


@pytest.mark.parametrize("kind,dim,factor", [("lora", 4, -1), ("lokr", 2, -1), ("lokr", 100000, -1),
                                             ("lokr", 2, 4), ("loha", 3, -1)])
def test_a_saved_file_patches_the_model_as_the_published_formulas_say(anima, tmp_path, kind, dim, factor):
    network = build_network(anima, NetworkConfig(type=kind, dim=dim, alpha=1.5, factor=factor))
    state = randomised(network, 3)
    network.detach_all()
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = read_network_file(path)
    assert loaded.keys() == state.keys()
    assert {k.split(".", 1)[1] for k in loaded} <= set(kind_named(kind).parts) | {"alpha"}
    preview = network_from_state(anima, loaded)  # what the preview renderer builds
    preview.eval()
    try:
        with torch.no_grad():
            for name, module in preview.loras.items():
                expected = reference_delta(kind, loaded, name)
                assert torch.allclose(module.delta().double(), expected, rtol=1e-5, atol=1e-6), name
                x = torch.randn(2, 3, module.base.in_features, generator=torch.Generator().manual_seed(5))
                patched = x.double() @ (module.base.weight.double() + expected).t()
                assert torch.allclose(module.base(x).double(), patched, rtol=1e-4, atol=1e-5), name
    finally:
        preview.detach_all()


def lokr_linear(out, inp, dim, factor=-1):
    module = LoKrModule.from_config(torch.nn.Linear(inp, out, bias=False), dim, 1.0, factor)
    for p in module.parameters():
        torch.nn.init.normal_(p)
    return module


@pytest.mark.parametrize("dim", [2, 64])  # low-rank w2, full w2
def test_kron_forward_and_backward_match_the_materialised_delta(dim):
    module = lokr_linear(24, 40, dim)
    x = torch.randn(3, 7, 40, requires_grad=True)
    w1, w2 = module.lokr_w1, module.w2()
    y = KronLinear.apply(x, w1, w2)
    reference = x @ torch.kron(w1, w2).t()
    assert torch.allclose(y, reference, atol=1e-4)
    grad = torch.randn_like(y)
    ours = torch.autograd.grad(y, [x, *module.parameters()], grad, retain_graph=True)
    theirs = torch.autograd.grad(reference, [x, *module.parameters()], grad)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_hadamard_merged_forward_and_backward_match_the_materialised_delta():
    base = torch.nn.Linear(20, 12, bias=True)
    module = LoHaModule(base, 3, 1.5)
    for p in module.parameters():
        torch.nn.init.normal_(p)
    module.attach()
    x = torch.randn(4, 5, 20, requires_grad=True)
    y = base(x)
    delta = (module.hada_w1_a @ module.hada_w1_b) * (module.hada_w2_a @ module.hada_w2_b) * module.scale
    reference = x @ (base.weight + delta).t() + base.bias
    assert torch.allclose(y, reference, atol=1e-4)
    grad = torch.randn_like(y)
    inputs = [x, *module.parameters()]
    for a, b in zip(torch.autograd.grad(y, inputs, grad, retain_graph=True),
                    torch.autograd.grad(reference, inputs, grad)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    assert base.weight.grad is None  # the frozen weight gets no gradient


def test_parameter_counts_follow_the_shapes_each_module_holds(anima):
    targets = anima.lora_targets(NetworkConfig())
    for kind, dim, factor in (("lora", 4, -1), ("lokr", 4, -1), ("lokr", 8, 4), ("lokr", 100000, -1), ("loha", 4, -1)):
        network = build_network(anima, NetworkConfig(type=kind, dim=dim, factor=factor))
        try:
            expected = sum(network_shapes.parameter_count(kind, t.linear.out_features, t.linear.in_features,
                                                          dim, factor) for t in targets)
            assert sum(p.numel() for p in network.parameters()) == expected
        finally:
            network.detach_all()
    # The full-size DiT's 2048 x 2048 linear at dim 16, factor -1: w1 32x32, w2_a 64x16, w2_b 16x64.
    assert network_shapes.lokr_shapes(2048, 2048, 16, -1) == {"lokr_w1": (32, 32), "lokr_w2_a": (64, 16),
                                                             "lokr_w2_b": (16, 64)}
    assert network_shapes.parameter_count("lokr", 8192, 2048, 100000, -1) == 64 * 32 + 128 * 64
    assert network_shapes.parameter_count("loha", 8192, 2048, 16) == 2 * 16 * (8192 + 2048)


def test_a_file_of_another_kind_is_refused_for_init_from(anima, tmp_path):
    lora = build_network(anima, NetworkConfig(dim=4))
    state = randomised(lora, 1)
    lora.detach_all()
    with pytest.raises(UserError, match="the file is a lora, and this job trains a lokr"):
        build_network(anima, NetworkConfig(type="lokr", dim=4), state)
    # The same kind continues with the file's shapes and weights.
    lokr = build_network(anima, NetworkConfig(type="lokr", dim=4))
    saved = randomised(lokr, 2)
    lokr.detach_all()
    continued = build_network(anima, NetworkConfig(type="lokr", dim=8), saved)
    try:
        assert all(torch.equal(continued.state_dict()[k], v) for k, v in saved.items())
    finally:
        continued.detach_all()


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_options_without_meaning_for_the_kind_are_refused_at_check(kind):
    problems = Problems()
    parse_job({"network": {"type": kind, "dropout": 0.1, "scale_weight_norms": 1.0}}, "job.yaml", problems)
    errors = {p.where for p in problems.errors}
    assert errors == {"network.dropout", "network.scale_weight_norms"}
    problems = Problems()
    parse_job({"network": {"type": kind, "rank_dropout": 0.1, "module_dropout": 0.1}}, "job.yaml", problems)
    assert not problems.errors


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_names_sd_scripts_module_for_the_kind(kind):
    from animad.train.checkpoint import rank_and_alpha

    config = JobConfig(network=NetworkConfig(type=kind, dim=100000 if kind == "lokr" else 4, factor=-1))
    kind_ = kind_named(kind)
    assert kind_.network_module == {"lora": "networks.lora_anima", "lokr": "networks.lokr",
                                    "loha": "networks.loha"}[kind]
    args = json.loads(kind_.network_args(config.network))
    assert ("factor" in args) == (kind == "lokr")
    linear = torch.nn.Linear(16, 8, bias=False)
    module = kind_.new_module(linear, config.network, config.network.dim, None)
    state = {f"m.{k}": v for k, v in module.state_dict().items()}
    dim, alpha = rank_and_alpha(state)
    # A full-matrix LoKr has no rank in its tensors (metadata then writes the job's dim) and trains at scale 1.
    assert (dim, alpha) == ((None, 100000.0) if kind == "lokr" else (4, 4.0))
    assert module.scale == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_a_kind_trains_continues_and_is_previewed_end_to_end(tmp_path, daemon_config, kind):
    """animad train, a second job continuing from its file (init_from, same kind), and the review package:
    the file names sd-scripts' module for the kind, holds only that kind's keys, and its preview rows differ
    from the no-network row."""
    from PIL import Image
    from safetensors import safe_open

    from animad.config.daemon import load_daemon_config
    from animad.demo.synthetic import tiny_job
    from animad.select.run import select_job
    from train_helpers import prepare, train

    network = {"type": kind, "dim": 2}
    first, daemon = prepare(tmp_path / "a", daemon_config, tiny_job(epochs=2, network=network,
                                                                        selection={"stop_at_floor": False}))
    assert train(first, daemon)[0] == "finished"
    saved = first.epoch_file("ds", 2)
    with safe_open(str(saved), "pt") as handle:
        meta, keys = handle.metadata(), set(handle.keys())
        weights = {k: handle.get_tensor(k) for k in keys}
    assert meta["ss_network_module"] == f"networks.{kind}" and meta["ss_network_dim"] == "2"
    assert {k.split(".", 1)[1] for k in keys} <= set(kind_named(kind).parts) | {"alpha"}

    (tmp_path / "b").mkdir()
    init = tmp_path / "b" / "previous.safetensors"
    init.write_bytes(saved.read_bytes())
    second, daemon = prepare(tmp_path / "b", daemon_config, tiny_job(
        epochs=1, network={**network, "init_from": str(init)}, selection={"stop_at_floor": False}))
    assert train(second, daemon)[0] == "finished"
    with safe_open(str(second.epoch_file("ds", 1)), "pt") as handle:
        moved = max((handle.get_tensor(k) - weights[k]).abs().max().item() for k in keys if not k.endswith("alpha"))
        scale = max(weights[k].abs().max().item() for k in keys if not k.endswith("alpha"))
    assert 0 < moved < scale  # continued from the file, not from a fresh start

    package = select_job(first, daemon=load_daemon_config(daemon_config), outbox=tmp_path / "outbox", steps=1,
                         size=16, prompts=["@demo, a red circle"], prompts_mode="replace")
    page = (package / "index.html").read_text(encoding="utf-8")
    assert kind_named(kind).title in page
    pngs = sorted((package / "previews").rglob("*.png"))
    baseline = [p for p in pngs if "base" in p.name]
    trained_rows = [p for p in pngs if p not in baseline]
    assert baseline and trained_rows
    base_pixels = Image.open(baseline[0]).tobytes()
    assert any(Image.open(p).tobytes() != base_pixels for p in trained_rows)


def test_the_kind_and_factor_are_part_of_the_run_fingerprint():
    """A resume state belongs to one kind and factor (they shape the tensors); a LoRA's fingerprint is
    what it was before kinds existed, so runs in progress still resume."""
    import hashlib
    import types

    from animad.train.loop import run_fingerprint

    dataset = types.SimpleNamespace(samples_per_epoch=lambda: 3, items=[])

    def fingerprint(**network):
        return run_fingerprint(JobConfig(network=NetworkConfig(**network)), dataset, "hash")

    net, config = NetworkConfig(), JobConfig()
    before = [  # the list run_fingerprint hashed before network.type existed
        "hash", config.seed, net.dim, net.alpha, net.targets, net.blocks, net.include, net.exclude,
        net.train_llm_adapter, net.train_text_encoder, net.text_encoder_dim, config.optimizer.type,
        config.data.batch_size, config.data.grad_accum, 3, []]
    assert fingerprint() == hashlib.sha256(repr(before).encode()).hexdigest()
    kinds = {fingerprint(type="lora"), fingerprint(type="lokr"), fingerprint(type="loha"),
             fingerprint(type="lokr", factor=4)}
    assert len(kinds) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_under_bf16_autocast_each_kind_matches_its_delta_and_keeps_fp32_gradients(kind):
    """How the loop runs a GPU job (bf16 weights, autocast, the network in fp32), on the CPU."""
    torch.manual_seed(0)
    base = torch.nn.Linear(48, 32, bias=False).to(torch.bfloat16).requires_grad_(False)
    module = kind_named(kind).new_module(base, NetworkConfig(type=kind, dim=4), 4, 2.0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    module.attach()
    x = torch.randn(2, 6, 48, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = base(x)
    y.float().square().mean().backward()
    reference = x.float() @ (base.weight.float() + module.delta().detach()).t()
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), reference, rtol=0.05, atol=0.05 * reference.abs().max().item())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in module.parameters())
