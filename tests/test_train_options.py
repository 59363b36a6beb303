"""Every optimizer, schedule and precision path runs real steps on the CPU (GPU speed is a benchmark)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from animad.config.job import load_resolved
from animad.layout import read_epochs_log
from animad.demo.synthetic import tiny_job
from animad.train.floor import floor_reached
from animad.train.optim import lr_factor

from train_helpers import optimizer_state_dtypes, prepare, run_job, train


@pytest.mark.parametrize("optimizer", [
    {"type": "prodigy", "lr": 1.0},
    {"type": "adafactor", "lr": 1e-3},
    {"type": "adamw8bit", "lr": 1e-3},
])
def test_optimizers_take_real_steps(tmp_path, daemon_config, optimizer):
    # Prodigy's d starts at 1e-6 and needs a few dozen steps to grow: 2 epochs x 32 steps.
    # dim 64: bitsandbytes keeps 8-bit state only for tensors of 4096 values or more.
    paths, records = run_job(tmp_path, daemon_config, optimizer=optimizer, network={"dim": 64},
                             data={"batch_size": 1, "repeats": 4}, schedule={"type": "constant", "max_epochs": 2})
    state = torch.load(paths.resume_state, weights_only=False)
    ups = [v for k, v in state["lora"].items() if k.endswith("lora_up.weight")]
    assert any(u.abs().max() > 0 for u in ups)  # lora_up starts at zero: it moved
    if optimizer["type"] == "prodigy":
        assert records[-1]["prodigy_d"] > 1e-6  # Prodigy's adapted step size d grew from d0 = 1e-6
    if optimizer["type"] == "adamw8bit":  # bitsandbytes' CPU kernels keep real 8-bit moments
        assert torch.uint8 in optimizer_state_dtypes(state)


def test_bf16_autocast_and_options_on_cpu(tmp_path, daemon_config):
    """The GPU default (bf16 autocast, fp32 LoRA masters) plus dropouts, flips and caption dropout."""
    paths, records = run_job(
        tmp_path, daemon_config, precision={"mixed": "bf16", "save": "bf16"},
        network={"dim": 4, "dropout": 0.1, "rank_dropout": 0.2, "module_dropout": 0.1},
        data={"flip": True, "caption_dropout": 0.3, "tag_dropout": 0.2, "resolution": 64, "batch_size": 2,
              "min_bucket": 64, "max_bucket": 128},
        schedule={"type": "cosine_with_restarts", "cycles": 2, "warmup_steps": 2, "max_epochs": 2})
    with safe_open(str(paths.epoch_file("ds", 2)), "pt") as f:
        assert f.get_tensor(f.keys()[0]).dtype == torch.bfloat16


def test_fp16_uses_a_grad_scaler(tmp_path, daemon_config):
    paths, _ = run_job(tmp_path, daemon_config, precision={"mixed": "fp16", "save": "fp16"})
    state = torch.load(paths.resume_state, weights_only=False)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0


def test_text_encoder_and_adapter_lora(tmp_path, daemon_config):
    paths, _ = run_job(tmp_path, daemon_config,
                       network={"dim": 4, "train_text_encoder": True, "train_llm_adapter": True,
                                "text_encoder_dim": 2})
    with safe_open(str(paths.epoch_file("ds", 2)), "pt") as f:
        keys = list(f.keys())
        te = [k for k in keys if k.startswith("lora_te_layers_0_self_attn_q_proj")]
        assert te and f.get_tensor("lora_te_layers_0_mlp_gate_proj.lora_down.weight").shape[0] == 2
        assert any(k.startswith("lora_unet_llm_adapter_blocks_0_cross_attn_o_proj") for k in keys)
        assert any(f.get_tensor(k).abs().max() > 0 for k in keys if k.startswith("lora_te_") and "lora_up" in k)


def test_continue_from_an_existing_lora(tmp_path, daemon_config):
    first, _ = run_job(tmp_path / "a", daemon_config, network={"dim": 4, "targets": ["mlp"]})
    previous = first.epoch_file("ds", 2)
    (tmp_path / "b").mkdir()
    init = tmp_path / "b" / "previous.safetensors"
    init.write_bytes(previous.read_bytes())
    job = tiny_job(epochs=1, selection={"stop_at_floor": False}, network={"dim": 8, "init_from": str(init)})
    paths, daemon = prepare(tmp_path / "b", daemon_config, job)
    train(paths, daemon)
    with safe_open(str(previous), "pt") as f_old, safe_open(str(paths.epoch_file("ds", 1)), "pt") as f_new:
        # Modules from the file keep its rank (4); new target modules get the configured dim (8).
        assert f_new.get_tensor("lora_unet_blocks_0_mlp_layer1.lora_down.weight").shape[0] == 4
        assert f_new.get_tensor("lora_unet_blocks_0_self_attn_q_proj.lora_down.weight").shape[0] == 8
        old = f_old.get_tensor("lora_unet_blocks_0_mlp_layer1.lora_up.weight").float()
        new = f_new.get_tensor("lora_unet_blocks_0_mlp_layer1.lora_up.weight").float()
        assert (new - old).abs().max() < old.abs().max()  # continued from it, not from zero


COMPILED = {"graphs": [], "runs": 0}  # what the recording backend below was given, and how often it ran


def recording_backend(graph, example_inputs):
    """A torch.compile backend that runs the graph as eager does and records it and each run of it."""
    COMPILED["graphs"].append(graph)

    def run(*args):
        COMPILED["runs"] += 1
        return graph.forward(*args)
    return run


def test_compile_path_wraps_blocks(tmp_path, daemon_config, tiny_models, monkeypatch):
    # Inductor is the GPU path (tests/test_gpu.py, bench/step_counts.py); on the CPU a backend that runs
    # eagerly and records its graphs proves the loop compiles the blocks and that the step runs through them.
    import torch._dynamo

    from animad.anima.load import load_dit

    if "animad_recording" not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(recording_backend, "animad_recording")
    monkeypatch.setenv("ANIMAD_COMPILE_BACKEND", "animad_recording")
    monkeypatch.setitem(COMPILED, "graphs", [])
    monkeypatch.setitem(COMPILED, "runs", 0)
    torch._dynamo.reset()  # graphs compiled by earlier tests must not be reused without reaching the backend
    try:
        _, records = run_job(tmp_path, daemon_config, epochs=1, precision={"compile": True, "mixed": "fp32"})
    finally:
        torch._dynamo.reset()
    assert COMPILED["graphs"], "torch.compile was never given a graph: the blocks were not compiled"
    for graph in COMPILED["graphs"]:  # each graph is a DiT block: its attention and MLP weights are inputs
        inputs = " ".join(node.name for node in graph.graph.nodes if node.op == "placeholder")
        assert "self_attn" in inputs and "cross_attn" in inputs and "mlp" in inputs, inputs
    depth = len(load_dit(tiny_models["dit"])[0].blocks)
    assert COMPILED["runs"] >= depth * records[-1]["step"]  # every block of every step ran compiled


def test_flash_attention_request_falls_back_on_cpu(tmp_path, daemon_config, caplog):
    run_job(tmp_path, daemon_config, epochs=1, precision={"attention": "flash", "mixed": "fp32"})
    assert "flash needs a CUDA GPU" in caplog.text


def test_alpha_mask_trains_only_the_opaque_part(tmp_path, daemon_config, monkeypatch):
    # Every image's right half is transparent. The loss must take nothing from there: its gradient with
    # respect to the model's prediction is exactly zero on the right half of the latents, and not on the left.
    from PIL import Image

    from animad.anima.dit import AnimaDiT

    job = tiny_job(epochs=1, selection={"stop_at_floor": False}, data={"alpha_mask": True})
    paths, daemon = prepare(tmp_path, daemon_config, job)
    for image in paths.dataset.glob("*.png"):
        rgba = Image.open(image).convert("RGBA")
        assert rgba.width % 16 == 0  # the half boundary falls between latent pixels (8 image pixels each)
        alpha = Image.new("L", rgba.size, 0)
        alpha.paste(255, (0, 0, rgba.width // 2, rgba.height))
        rgba.putalpha(alpha)
        rgba.save(image)
    gradients = []
    forward = AnimaDiT.forward

    def observed(self, *args, **kwargs):  # the real forward; the gradient of its training output is kept
        out = forward(self, *args, **kwargs)
        if out.requires_grad:
            out.register_hook(lambda grad: gradients.append(grad.detach().clone()))
        return out

    monkeypatch.setattr(AnimaDiT, "forward", observed)
    status, _ = train(paths, daemon)
    assert status == "finished"
    steps = read_epochs_log(paths.epochs_log)[-1]["step"]
    assert len(gradients) >= steps
    for grad in gradients:  # (batch, 16, h, w) latents
        half = grad.shape[-1] // 2
        assert torch.count_nonzero(grad[..., half:]) == 0  # the transparent half adds nothing to the loss
        assert all(torch.count_nonzero(g[..., :half]) > 0 for g in grad)  # each sample's opaque half does


def test_alpha_mask_flips_with_the_latents(tmp_path, daemon_config, monkeypatch):
    # Every image's right half is transparent, and flips are on. A flipped sample trains the mirrored
    # latents, so its transparent half is on the left: the loss must take nothing from the left half
    # there (and nothing from the right half of an unflipped sample). Before the fix the mask was the
    # unflipped image's whatever the latents were.
    from PIL import Image

    from animad.train import loop

    job = tiny_job(epochs=2, selection={"stop_at_floor": False}, data={"alpha_mask": True, "flip": True})
    paths, daemon = prepare(tmp_path, daemon_config, job)
    for image in paths.dataset.glob("*.png"):
        rgba = Image.open(image).convert("RGBA")
        assert rgba.width % 16 == 0  # the half boundary falls between latent pixels (8 image pixels each)
        rgba.paste((255, 0, 0, 255), (0, 0, rgba.width // 4, rgba.height))  # asymmetric: its mirror differs
        alpha = Image.new("L", rgba.size, 0)
        alpha.paste(255, (0, 0, rgba.width // 2, rgba.height))
        rgba.putalpha(alpha)
        rgba.save(image)
    caches, seen = [], []  # seen: (x0 of the micro-batch, the gradient of its prediction, filled in backward)
    fill_caches, flow_loss = loop.fill_caches, loop.flow_loss

    def kept_caches(*args, **kwargs):
        caches.append(fill_caches(*args, **kwargs))
        return caches[-1]

    def observed_loss(prediction, x0, noise, mask=None):
        if prediction.requires_grad:
            entry = [x0.detach().cpu(), None]
            prediction.register_hook(lambda grad: entry.__setitem__(1, grad.detach().cpu()))
            seen.append(entry)
        return flow_loss(prediction, x0, noise, mask)

    monkeypatch.setattr(loop, "fill_caches", kept_caches)
    monkeypatch.setattr(loop, "flow_loss", observed_loss)
    status, _ = train(paths, daemon)
    assert status == "finished"
    latents = caches[0].latents
    sides = []
    for x0, grad in seen:
        for sample, g in zip(x0, grad):
            flipped = any(e.flipped is not None and torch.equal(sample, e.flipped) for e in latents)
            plain = any(torch.equal(sample, e.latents) for e in latents)
            assert flipped != plain  # each sample is one cache entry's latents or its mirror's (not both)
            half = g.shape[-1] // 2
            transparent, opaque = (g[..., :half], g[..., half:]) if flipped else (g[..., half:], g[..., :half])
            assert torch.count_nonzero(transparent) == 0  # the transparent half adds nothing to the loss
            assert torch.count_nonzero(opaque) > 0  # the opaque half does
            sides.append(flipped)
    assert True in sides and False in sides  # both kinds of sample were trained


def test_schedules_shape():
    assert lr_factor(0, 100, 10, "constant") < 0.2 and lr_factor(10, 100, 10, "constant") == 1.0
    assert lr_factor(100, 100, 0, "linear") == 0.0 and abs(lr_factor(50, 100, 0, "cosine") - 0.5) < 1e-9
    restarts = [lr_factor(s, 100, 0, "cosine_with_restarts", 2) for s in (0, 49, 50)]
    assert restarts[0] == 1.0 and restarts[1] < 0.01 and restarts[2] == 1.0


def test_stop_request_pauses_at_a_step_boundary(tmp_path, daemon_config):
    job = tiny_job(epochs=3, selection={"stop_at_floor": False})
    paths, daemon = prepare(tmp_path, daemon_config, job)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= 3

    status, _ = train(paths, daemon, stop=stop)
    assert status == "paused"
    state = torch.load(paths.resume_state, weights_only=False)
    assert state["global_step"] == 3 and not state["finished"]
    status, _ = train(paths, daemon)
    assert status == "finished"
    assert [r["epoch"] for r in read_epochs_log(paths.epochs_log)] == [1, 2, 3]
    assert (paths.root / "finished.txt").read_text() == "reached max_epochs 3\n"


def test_a_pause_on_the_max_steps_step_still_saves_that_epoch_and_names_max_steps(tmp_path, daemon_config):
    job = tiny_job(epochs=5, selection={"stop_at_floor": False}, schedule={"max_steps": 6})
    paths, daemon = prepare(tmp_path, daemon_config, job)  # 8 images, batches of 2: 4 steps per epoch
    calls = {"n": 0}

    def stop():  # the window closes on the very step that reaches max_steps, mid-epoch 2
        calls["n"] += 1
        return calls["n"] == 6

    assert train(paths, daemon, stop=stop)[0] == "paused"
    state = torch.load(paths.resume_state, weights_only=False)
    assert (state["epoch"], state["batch_index"], state["global_step"]) == (2, 2, 6) and not state["finished"]
    assert train(paths, daemon)[0] == "finished"
    records = read_epochs_log(paths.epochs_log)
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 4), (2, 6)]  # the cut epoch is evaluated and saved
    assert paths.epoch_file("ds", 2).is_file()
    assert (paths.root / "finished.txt").read_text() == "reached max_steps 6\n"
    assert torch.load(paths.resume_state, weights_only=False)["finished"]


def test_a_confirmed_floor_stops_the_run_at_the_first_epoch_it_is_confirmed(tmp_path, daemon_config):
    # lr 0: the LoRA never moves, so the eval curve is flat and its floor is confirmed as soon as
    # the detector has enough epochs (5 points spanning 2 * patience). cooldown_fraction 0: stop at
    # once (the default cools down first, tests/test_cooldown.py).
    job = tiny_job(epochs=30, optimizer={"lr": 0.0}, selection={"stop_at_floor": True, "patience": 2,
                                                                 "cooldown_fraction": 0})
    paths, daemon = prepare(tmp_path, daemon_config, job, count=4)
    assert train(paths, daemon)[0] == "finished"
    records = read_epochs_log(paths.epochs_log)
    selection = load_resolved(paths.resolved).selection
    assert floor_reached(records, selection) and not floor_reached(records[:-1], selection)
    assert len(records) < 30
    assert (paths.root / "finished.txt").read_text() == (f"stopped at the confirmed loss floor after epoch "
                                                         f"{len(records)}\n")


def lora_norms(state: dict) -> list[float]:
    """Each module's weight-delta norm, alpha / rank * ||up @ down||, from a LoRA state dict."""
    norms = []
    for key in state:
        if key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            down, up = state[key].float(), state[f"{name}.lora_up.weight"].float()
            norms.append(float(state[f"{name}.alpha"]) / down.shape[0] * float((up @ down).norm()))
    return norms


def test_scale_weight_norms_caps_every_module_and_is_logged(tmp_path, daemon_config):
    # lr 3e-2 grows the deltas well past 0.02 within an epoch; the cap holds them there.
    limit = 0.02
    paths, _ = run_job(tmp_path / "capped", daemon_config, network={"dim": 4, "scale_weight_norms": limit},
                       optimizer={"lr": 3e-2}, precision={"save": "fp32"})
    free, _ = run_job(tmp_path / "free", daemon_config, network={"dim": 4}, optimizer={"lr": 3e-2},
                      precision={"save": "fp32"})
    capped = lora_norms(torch.load(paths.resume_state, weights_only=False)["lora"])
    uncapped = lora_norms(torch.load(free.resume_state, weights_only=False)["lora"])
    assert max(uncapped) > 2 * limit  # without the cap the deltas grow past it ...
    assert max(capped) <= limit * (1 + 1e-4)  # ... with it none ends above it
    events = b"".join(p.read_bytes() for p in paths.tensorboard.rglob("events.*"))
    assert b"max_norm/keys_scaled" in events and b"norm/avg_key_norm" in events
    with safe_open(str(paths.epoch_file("ds", 2)), "pt") as f:
        meta = f.metadata()
    assert meta["ss_scale_weight_norms"] == str(limit) and meta["ss_ip_noise_gamma"] == "None"
    with safe_open(str(free.epoch_file("ds", 2)), "pt") as f:
        assert f.metadata()["ss_scale_weight_norms"] == "None"


def test_ip_noise_gamma_perturbs_the_input_as_sd_scripts_does():
    from animad.config.job import TimestepConfig
    from animad.train.flow import input_perturbation, noisy

    x0, noise, sigma = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4), torch.tensor([0.25, 0.75])
    torch.manual_seed(1)
    extra = input_perturbation(x0, sigma, TimestepConfig(ip_noise_gamma=0.1))
    torch.manual_seed(1)
    xi = torch.randn_like(x0)
    s = sigma.view(-1, 1, 1, 1)
    # sd-scripts: (1 - sigma) * x0 + sigma * (noise + gamma * xi); the target stays noise - x0.
    assert torch.allclose(noisy(x0, noise, sigma) + extra, (1 - s) * x0 + s * (noise + 0.1 * xi), atol=1e-6)
    torch.manual_seed(1)
    random_strength = input_perturbation(x0, sigma, TimestepConfig(ip_noise_gamma=0.1,
                                                                   ip_noise_gamma_random_strength=True))
    ratio = random_strength / extra  # one strength in [0, 1) per batch
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-4) and 0 <= ratio.flatten()[0] < 1


def test_ip_noise_gamma_changes_training_and_is_in_the_metadata(tmp_path, daemon_config):
    paths, _ = run_job(tmp_path / "ip", daemon_config, epochs=1, timesteps={"ip_noise_gamma": 0.1},
                       precision={"save": "fp32"})
    plain, _ = run_job(tmp_path / "plain", daemon_config, epochs=1, precision={"save": "fp32"})
    a = torch.load(paths.resume_state, weights_only=False)["lora"]
    b = torch.load(plain.resume_state, weights_only=False)["lora"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-5
    with safe_open(str(paths.epoch_file("ds", 1)), "pt") as f:
        meta = f.metadata()
    assert meta["ss_ip_noise_gamma"] == "0.1" and meta["ss_ip_noise_gamma_random_strength"] == "False"


def test_an_out_of_memory_error_halves_the_micro_batch_with_the_same_result(tmp_path, daemon_config, monkeypatch):
    """A simulated OOM in the forward: the step is redone at half the micro-batch, and the run ends with
    the weights of a run at that micro-batch from its first step (and of one that never ran out)."""
    from animad.anima.pipeline import Anima

    real_velocity = Anima.velocity

    def run(name, oom_at_call):
        calls = {"n": 0}

        def velocity(anima, x_t, sigma, context):
            if torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] == oom_at_call and x_t.shape[0] > 1:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_velocity(anima, x_t, sigma, context)

        monkeypatch.setattr(Anima, "velocity", velocity)
        job = tiny_job(epochs=2, selection={"stop_at_floor": False}, precision={"save": "fp32"},
                       data={"batch_size": 2, "grad_accum": 2})
        paths, daemon = prepare(tmp_path / name, daemon_config, job)
        status, progress = train(paths, daemon)
        assert status == "finished"
        return torch.load(paths.resume_state, weights_only=False), progress

    whole, whole_progress = run("whole", oom_at_call=None)
    halved_later, later_progress = run("later", oom_at_call=3)  # mid-epoch 1, in step 2's first micro-batch
    halved_first, _ = run("first", oom_at_call=1)  # the very first forward: micro-batch 1 from the start
    assert halved_later["micro_batch"] == halved_first["micro_batch"] == 1 and whole["micro_batch"] is None
    assert halved_later["global_step"] == whole["global_step"]
    shown = [p for p in later_progress if p.get("phase") == "training"]
    assert shown[-1]["micro_batch"] == 1 and not any("micro_batch" in p for p in whole_progress)
    for other in (halved_first, whole):
        # fp32: the halves sum in another order than the whole batch; nothing else differs.
        assert max((halved_later["lora"][k] - other["lora"][k]).abs().max().item()
                   for k in other["lora"]) < 1e-5
