"""An sd-scripts or kohya_ss name in job.yaml gets its real key, not difflib's spelling guess (issue 10)."""

from __future__ import annotations

import dataclasses

from animad.config.aliases import ALIASES
from animad.config.job import JobConfig, SubsetConfig, parse_job
from animad.config.problems import Problems
from animad.importer.translate import JOB_LEVEL, SUBSET_LEVEL


def fixes(data: dict) -> dict[str, str]:
    problems = Problems()
    parse_job(data, "job.yaml", problems)
    return {p.where: p.fix for p in problems.errors if p.message == "unknown key"}


def test_the_issues_examples_get_their_real_keys():
    found = fixes({
        "data": {"caption_tag_dropout_rate": 0.1},
        "network": {"network_dropout": 0.1},
        "schedule": {"save_every_n_epochs": 10},
        "network_dim": 8, "learning_rate": 1e-4, "max_train_epochs": 60,
    })
    assert found["data.caption_tag_dropout_rate"].startswith(
        "this is sd-scripts' --caption_tag_dropout_rate; here it is data.tag_dropout")
    assert "caption_dropout?" not in found["data.caption_tag_dropout_rate"]
    assert found["network.network_dropout"].startswith("this is sd-scripts' --network_dropout; here it is network.dropout")
    assert "rank_dropout" not in found["network.network_dropout"]
    assert "it has no key here" in found["schedule.save_every_n_epochs"]
    assert "state_every_minutes?" not in found["schedule.save_every_n_epochs"]
    assert "here it is network.dim" in found["network_dim"] and "4" in found["network_dim"]  # its default differs
    assert "here it is optimizer.lr" in found["learning_rate"] and "2e-6" in found["learning_rate"]
    assert "here it is schedule.max_epochs" in found["max_train_epochs"] and "stop_at_floor" in found["max_train_epochs"]


def test_semantic_differences_are_said():
    found = fixes({"network_alpha": 4, "lr_warmup": 10, "epoch": 20, "network_train_unet_only": True,
                   "bucket_no_upscale": True, "min_snr_gamma": 5})
    assert "null means alpha = dim" in found["network_alpha"]
    assert "kohya_ss' lr_warmup is a percentage" in found["lr_warmup"] and "warmup_percent" in found["lr_warmup"]
    assert found["epoch"].startswith("this is kohya_ss' epoch; here it is schedule.max_epochs")
    assert "inverted" in found["network_train_unet_only"] and "inverted" in found["bucket_no_upscale"]
    assert "no effect in sd-scripts' Anima trainer" in found["min_snr_gamma"]


def test_names_inside_subsets_and_kohya_folders_are_hinted_too():
    found = fixes({"data": {"subsets": {"10_outfit": {"num_repeats": 3, "flip_aug": True}}}})
    assert "here it is data.subsets.NAME.repeats" in found["data.subsets.10_outfit.num_repeats"]
    assert "here it is data.flip" in found["data.subsets.10_outfit.flip_aug"]


def test_other_typos_still_get_the_spelling_guess():
    assert fixes({"netwrok": {}})["netwrok"] == "did you mean 'network'?"


def job_keys(cls=JobConfig, prefix="") -> set[str]:
    keys = set()
    for field in dataclasses.fields(cls):
        keys.add(prefix + field.name)
        if field.metadata.get("section"):
            keys |= job_keys(field.default_factory, f"{prefix}{field.name}.")
    return keys


def test_every_alias_points_at_a_key_that_exists():
    # One table for hints and import: a renamed key must not leave a hint pointing nowhere.
    keys = job_keys() | {"optimizer"}
    subset_keys = {f.name for f in dataclasses.fields(SubsetConfig)}
    for name, alias in ALIASES.items():
        if alias.target is None:
            assert alias.note, name
        elif alias.target.startswith("data.subsets.NAME."):
            assert alias.target.rsplit(".", 1)[1] in subset_keys, name
        else:
            assert alias.target in keys, f"{name} -> {alias.target}"
    # and the importer's dataset keys are the same table's
    assert {f"data.{k}" for k in JOB_LEVEL.values()} <= keys and {f"data.{k}" for k in SUBSET_LEVEL.values()} <= keys
