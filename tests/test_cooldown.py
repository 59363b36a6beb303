"""Stop at the floor with a cooldown: the LR decays from the floor to 0, the epochs say so, a resume
into the cooldown follows the same LR, and the LoRA files say what was trained (sd-scripts' hashes)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from animad.config.job import JobConfig, load_resolved
from animad.daemon.progress import describe_progress
from animad.demo.synthetic import tiny_job
from animad.layout import Ending, read_epochs_log
from animad.train.checkpoint import rank_and_alpha, save_lora, sshs_hashes
from animad.train.floor import floor_reached
from animad.train.optim import Cooldown, build_scheduler, follow_cooldown, lr_factor

from train_helpers import prepare, train

LR = 1e-7  # so small the eval curve is flat (the floor is confirmed within a few epochs), yet not 0
MAX_EPOCHS = 30


def cooldown_job(**overrides) -> dict:
    # 4 images in batches of 2: 2 steps per epoch. patience 2: a flat curve confirms after ~5 epochs.
    job = {"optimizer": {"type": "adamw", "lr": LR, "weight_decay": 0.0}, "precision": {"save": "fp32"},
           "selection": {"stop_at_floor": True, "patience": 2}}
    job.update(overrides)
    return tiny_job(epochs=MAX_EPOCHS, **job)


@pytest.fixture(scope="module")
def cooled(tmp_path_factory, tiny_models):
    """One run that stops at its floor and cools down, shared by the checks below."""
    from animad.demo.synthetic import write_daemon_config

    tmp = tmp_path_factory.mktemp("cooled")
    config = write_daemon_config(tmp / "animad.yaml", tiny_models)
    paths, daemon = prepare(tmp, config, cooldown_job(), count=4)
    status, progress = train(paths, daemon)
    assert status == "finished"
    records = read_epochs_log(paths.epochs_log)
    selection = load_resolved(paths.resolved).selection
    confirmed = next(e for e in range(1, len(records) + 1) if floor_reached(records[:e], selection))
    return paths, daemon, config, records, progress, confirmed


def test_the_cooldown_starts_at_the_confirmed_floor_and_ends_at_lr_0(cooled):
    paths, _, _, records, _, confirmed = cooled
    epochs = max(3, round(0.2 * confirmed))  # the defaults: 20% of the epochs trained, at least 3
    assert [r["epoch"] for r in records] == list(range(1, confirmed + epochs + 1))
    assert len(records) < MAX_EPOCHS
    assert [r["cooldown"] for r in records] == [False] * confirmed + [True] * epochs
    # record["lr"] is the LR after the epoch's last step: constant up to the floor, then straight down to 0.
    lrs = [r["lr"] for r in records]
    assert lrs[:confirmed] == pytest.approx([LR] * confirmed, rel=1e-12)
    assert lrs[confirmed:] == pytest.approx([LR * (1 - k / epochs) for k in range(1, epochs + 1)], abs=1e-20)
    assert lrs[-1] == 0.0
    assert all(paths.epoch_file("ds", r["epoch"]).is_file() for r in records)  # cooldown epochs are saved too
    assert (paths.root / "finished.txt").read_text() == (
        f"stopped at the confirmed loss floor after epoch {confirmed}, then cooled the learning rate to 0 over "
        f"{epochs} epochs\n")
    # The record behind the sentence: what select/ and the daemon read (never the sentence).
    assert paths.read_ending() == Ending(
        kind="floor", epochs=confirmed + epochs, floor_epoch=confirmed, cooldown_epochs=epochs,
        sentence=f"stopped at the confirmed loss floor after epoch {confirmed}, then cooled the learning rate to 0 "
                 f"over {epochs} epochs")


def test_tensorboard_steps_follow_the_same_decay(cooled):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    paths, _, _, records, _, confirmed = cooled
    events = EventAccumulator(str(paths.tensorboard))
    events.Reload()
    by_step = {e.step: e.value for e in events.Scalars("lr/unet")}
    floor_step, last_step = records[confirmed - 1]["step"], records[-1]["step"]
    assert by_step[floor_step] == pytest.approx(LR)
    cooling = [by_step[s] for s in range(floor_step, last_step + 1)]
    assert all(a > b for a, b in zip(cooling, cooling[1:])) and by_step[last_step] == 0.0


def test_metadata_after_an_early_stop_says_what_was_trained(cooled):
    paths, _, _, records, _, confirmed = cooled
    last, epochs = records[-1], len(records) - confirmed

    def metadata(epoch):
        with safe_open(str(paths.epoch_file("ds", epoch)), "pt") as f:
            return f.metadata()

    final = metadata(last["epoch"])
    assert final["ss_epoch"] == final["ss_num_epochs"] == final["ss_max_train_epochs"] == str(len(records))
    assert final["ss_steps"] == final["ss_max_train_steps"] == str(last["step"])
    assert final["ss_lr_scheduler"] == (f"constant, cooled linearly to 0 from epoch {confirmed + 1} over {epochs} "
                                        f"epochs (floor confirmed at epoch {confirmed})")
    assert final["ss_base_model_version"] == "anima" and final["ss_v2"] == "False"
    # Before the floor the run was headed for max_epochs, and that is what those files say.
    early = metadata(1)
    assert (early["ss_epoch"], early["ss_num_epochs"], early["ss_max_train_epochs"]) == ("1", "1", str(MAX_EPOCHS))
    assert early["ss_lr_scheduler"] == "constant"
    for record in records:
        with safe_open(str(paths.epoch_file("ds", record["epoch"])), "pt") as f:
            assert f.metadata()["ss_steps"] == str(record["step"])


def test_status_shows_the_floor_and_an_eta_to_the_end_of_the_cooldown(cooled):
    _, _, _, records, progress, confirmed = cooled
    training = [p for p in progress if p.get("phase") == "training"]
    before = [p for p in training if not p["cooling"]]
    cooling = [p for p in training if p["cooling"]]
    assert {p["floor"] for p in before} == {"not yet"} and before[-1]["end_epoch"] == MAX_EPOCHS
    assert before[-1]["eta_until"].startswith(f"max_epochs {MAX_EPOCHS}")
    assert {p["floor"] for p in cooling} == {f"confirmed at epoch {confirmed}"}
    assert cooling[-1]["end_epoch"] == len(records) and cooling[-1]["cooldown_epochs_left"] == 1
    assert cooling[0]["cooldown_epochs_left"] == len(records) - confirmed
    last = cooling[-1]
    assert last["eta_seconds"] == pytest.approx((last["end_step"] - last["step"]) * last["s_per_it"])
    line = describe_progress({"status": "running", "progress": cooling[0]})
    assert f"/{len(records)} " in line and f"to the end of the cooldown (epoch {len(records)})" in line
    assert f"floor: confirmed at epoch {confirmed}, cooling down, {len(records) - confirmed} epochs left" in line
    assert "floor: not yet" in describe_progress({"status": "running", "progress": before[-1]})
    old_row = {k: v for k, v in before[-1].items() if k not in ("floor", "cooling", "end_epoch", "end_step",
                                                                 "eta_until")}
    assert describe_progress({"status": "running", "progress": old_row}).startswith("epoch ")


def pause_once_a_cooldown_epoch_is_done(paths):
    """should_stop: True once, at the first step after a cooldown epoch was saved (a pause mid-cooldown)."""
    paused = {"yet": False}

    def stop():
        records = read_epochs_log(paths.epochs_log)
        if not paused["yet"] and records and records[-1]["cooldown"]:
            paused["yet"] = True
            return True
        return False

    return stop


def test_a_pause_and_a_crash_inside_the_cooldown_resume_to_the_same_weights(cooled, tmp_path):
    reference, _, config, reference_records, _, confirmed = cooled
    paths, daemon = prepare(tmp_path, config, cooldown_job(), count=4)
    # 1) A pause mid-epoch, one step into the cooldown's second epoch: the state is saved at that step.
    assert train(paths, daemon, stop=pause_once_a_cooldown_epoch_is_done(paths))[0] == "paused"
    state = torch.load(paths.resume_state, weights_only=False)
    assert state["cooldown_after"] == confirmed and state["batch_index"] > 0
    # 2) A crash (as kill -9: nothing saved) in the epoch after that one: the resume replays it from the
    #    state saved at the end of the one before.
    seen = {"epochs": 0}

    def crash(progress):
        if progress.get("phase") == "saving":
            seen["epochs"] += 1
        if seen["epochs"] == 1 and progress.get("phase") == "training":
            raise KeyboardInterrupt  # like the process dying mid-epoch: no state written for it

    from animad.train.run import train_job

    with pytest.raises(KeyboardInterrupt):
        train_job(paths, daemon=daemon, should_stop=lambda: False, on_progress=crash)
    assert train(paths, daemon)[0] == "finished"
    records = read_epochs_log(paths.epochs_log)
    assert [(r["epoch"], r["step"], r["cooldown"]) for r in records] == [
        (r["epoch"], r["step"], r["cooldown"]) for r in reference_records]
    assert [r["lr"] for r in records] == [r["lr"] for r in reference_records]
    for epoch in (confirmed + 1, len(records)):
        a, b = load_file(str(reference.epoch_file("ds", epoch))), load_file(str(paths.epoch_file("ds", epoch)))
        assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0, epoch


def test_the_lr_is_a_pure_function_of_the_step_and_the_saved_cooldown():
    cooldown = Cooldown(start_step=40, steps=10)
    plain = [lr_factor(s, 100, 0, "cosine") for s in range(41)]
    cooled = [lr_factor(s, 100, 0, "cosine", cooldown=cooldown) for s in range(60)]
    assert cooled[:41] == plain  # no jump where the cooldown starts
    assert cooled[50] == 0.0 and cooled[59] == 0.0 and cooled[45] == pytest.approx(plain[40] / 2)
    # A scheduler rebuilt from a saved state (its function is not in it) continues exactly.
    config = JobConfig()
    weights = torch.nn.Parameter(torch.zeros(2))
    first = torch.optim.SGD([weights], lr=0.5)
    scheduler = build_scheduler(first, config.schedule, config.selection, 100)
    follow_cooldown(scheduler, config.schedule, config.selection, 100, cooldown)
    for _ in range(44):
        first.step()
        scheduler.step()
    second = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    second.load_state_dict(first.state_dict())
    rebuilt = build_scheduler(second, config.schedule, config.selection, 100)
    rebuilt.load_state_dict(scheduler.state_dict())
    follow_cooldown(rebuilt, config.schedule, config.selection, 100, cooldown)
    for _ in range(10):
        for optimizer, sched in ((first, scheduler), (second, rebuilt)):
            optimizer.step()
            sched.step()
        assert rebuilt.get_last_lr() == scheduler.get_last_lr()
    assert scheduler.get_last_lr() == [0.0]


def test_a_constant_schedule_that_finds_no_floor_still_ends_cooled(tmp_path, daemon_config):
    # Patience 30 cannot confirm a floor in 6 epochs: the cooldown is planned to end at max_epochs.
    job = tiny_job(epochs=6, selection={"stop_at_floor": True, "patience": 30}, schedule={"type": "constant"})
    paths, daemon = prepare(tmp_path, daemon_config, job, count=4)
    assert train(paths, daemon)[0] == "finished"
    records = read_epochs_log(paths.epochs_log)
    assert [r["cooldown"] for r in records] == [False, False, False, True, True, True]
    assert records[2]["lr"] == pytest.approx(3e-3) and records[-1]["lr"] == 0.0
    assert (paths.root / "finished.txt").read_text() == "reached max_epochs 6\n"
    assert paths.read_ending() == Ending(kind="max_epochs", epochs=6, floor_epoch=None, cooldown_epochs=3,
                                         sentence="reached max_epochs 6")
    with safe_open(str(paths.epoch_file("ds", 6)), "pt") as f:
        assert f.metadata()["ss_lr_scheduler"] == ("constant, cooled linearly to 0 from epoch 4 over 3 epochs "
                                                   "(to end at the last epoch)")


# -- the LoRA file's hashes and ranks ---------------------------------------------------------------

def known_tensors() -> dict[str, torch.Tensor]:
    """1.5 MiB of fixed values: past 1 MiB, so the legacy hash reads tensor bytes, not an empty tail."""
    return {"lora_unet_x.lora_down.weight": torch.arange(256 * 1024, dtype=torch.float32).reshape(1024, 256) / 7,
            "lora_unet_x.lora_up.weight": torch.ones(512, 256, dtype=torch.float32) / 3,
            "lora_unet_x.alpha": torch.tensor(1.0)}


def test_sshs_hashes_are_sd_scripts_hashes_on_a_known_file(tmp_path):
    path = tmp_path / "known.safetensors"
    metadata = {"ss_network_dim": "1024", "ss_epoch": "3", "modelspec.title": "edited later"}
    save_lora(path, known_tensors(), "fp32", metadata)
    data = path.read_bytes()
    with safe_open(str(path), "pt") as f:
        saved = f.metadata()
    # The model hash is what sd-webui-additional-networks recomputes from the file we wrote: sha256 over
    # everything after the 8-byte header length and the header.
    header = int.from_bytes(data[:8], "little")
    assert saved["sshs_model_hash"] == hashlib.sha256(data[8 + header:]).hexdigest()
    # Pinned: these bytes' hashes, computed once as sd-scripts' precalculate_safetensors_hashes does.
    assert saved["sshs_model_hash"] == "ab6ae6ddd6751601cb4d5e09e2281503f0b40e846506b43746182b0717f3cde2"
    assert saved["sshs_legacy_hash"] == "18926d9d"
    # modelspec.* (user-editable) does not enter either hash; ss_* does enter the legacy one (its offset).
    same = sshs_hashes(known_tensors(), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    assert same == (saved["sshs_model_hash"], saved["sshs_legacy_hash"])
    assert sshs_hashes(known_tensors(), {})[0] == saved["sshs_model_hash"]
    # A file under 1 MiB: the legacy hash reads nothing, as in sd-scripts: sha256(b"")[:8].
    assert sshs_hashes({"a": torch.zeros(4)}, {})[1] == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"


def test_rank_and_alpha_come_from_the_tensors():
    assert rank_and_alpha(known_tensors()) == (1024, 1.0)
    mixed = {f"m{i}.lora_down.weight": torch.zeros(r, 8) for i, r in enumerate((4, 4, 8))}
    mixed.update({f"m{i}.alpha": torch.tensor(float(a)) for i, a in enumerate((1, 1, 8))})
    assert rank_and_alpha(mixed) == (4, 1.0)  # the rank most modules have


def test_a_continued_rank_4_alpha_1_lora_says_4_and_1(tmp_path, daemon_config):
    first_job = tiny_job(epochs=1, selection={"stop_at_floor": False}, network={"dim": 4, "alpha": 1})
    first, daemon = prepare(tmp_path / "a", daemon_config, first_job, count=4)
    assert train(first, daemon)[0] == "finished"
    (tmp_path / "b").mkdir()
    init = tmp_path / "b" / "previous.safetensors"
    init.write_bytes(first.epoch_file("ds", 1).read_bytes())
    # The job's own network.dim (16) is not what the file trained: every module came from the rank-4 file.
    job = tiny_job(epochs=1, selection={"stop_at_floor": False}, network={"dim": 16, "init_from": str(init)})
    paths, daemon = prepare(tmp_path / "b", daemon_config, job, count=4)
    assert train(paths, daemon)[0] == "finished"
    with safe_open(str(paths.epoch_file("ds", 1)), "pt") as f:
        metadata = f.metadata()
        assert f.get_tensor("lora_unet_blocks_0_mlp_layer1.lora_down.weight").shape[0] == 4
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "1")
