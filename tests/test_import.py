"""`animad import`: the guide's own sd-scripts files become job folders that train as sd-scripts would have.

Real files throughout: the guide's TOMLs and .bat from tests/fixtures/sd-scripts, generated
images copied for real, and `animad check` run on the result with the tiny model set.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from animad.cli.main import main
from animad.config.daemon import load_daemon_config
from animad.config.job import load_job_file
from animad.config.problems import Problems
from animad.demo.synthetic import make_dataset, write_daemon_config
from animad.errors import UserError
from animad.importer.flags import ALL, BOOL, FLOAT, INT, INT_OR_FLOAT, LIST
from animad.importer.folder import import_files, local_path, running_under_wsl
from animad.importer.read import read_sources
from animad.importer.sources import int_or_float
from animad.intake.check import check_folder

# The guide's files exactly as it prints them (CRLF and all; a copy of ../shared/fixtures/sd-scripts,
# kept in the repository so the tests run wherever it is checked out).
GUIDE = Path(__file__).resolve().parent / "fixtures" / "sd-scripts"
BAT, MAY, NAMI = GUIDE / "train_panchybriefs_v1.bat", GUIDE / "MayBikinis.toml", GUIDE / "NamiSyrup_v3.toml"
MAY_SUBSETS = {"MayPinkBikini": 1, "MayGreenBikini": 1, "MayFrilledBikini": 1, "MayRedBikini": 3,
               "MayYellowBikini": 3, "MayCheckeredBikini": 4}
WINDOWS_DIR = "C:\\path\\to\\image\\directory\\"


@pytest.fixture()
def daemon(tmp_path, tiny_models):
    """animad.yaml with the tiny set also under the name the guide's .bat gets (its DiT file's stem)."""
    path = write_daemon_config(tmp_path / "animad.yaml", tiny_models)
    config = yaml.safe_load(path.read_text())
    config["models"]["anima_baseV10"] = config["models"]["tiny"]
    path.write_text(yaml.safe_dump(config))
    return load_daemon_config(path)


def job_file_of(folder: Path) -> Path:
    """job.yaml, or the draft animad import leaves when the folder cannot train yet (no images here)."""
    return folder / "job.yaml" if (folder / "job.yaml").exists() else folder / "job.draft.yaml"


def job_of(folder: Path):
    problems = Problems()
    config = load_job_file(job_file_of(folder), problems)
    assert not problems.items, problems.render("job.yaml")
    return config


def may_with_real_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """The guide's May TOML with its image_dirs pointing at generated folders (and the folders)."""
    source = make_dataset(tmp_path / "sd-images", subsets={name: 2 for name in MAY_SUBSETS})
    (source / "MayRedBikini" / "img000_anima.npz").write_bytes(b"sd-scripts latent cache")  # not an image
    text = MAY.read_text().replace(WINDOWS_DIR, str(source).replace("\\", "/") + "/")
    toml = tmp_path / "MayBikinis.toml"
    toml.write_text(text)
    return toml, source


def every_flag_accounted_for(folder: Path, files: list[Path]) -> None:
    """Every flag and dataset key of the files is on a commented job.yaml line or in IMPORT.txt."""
    written = job_file_of(folder).read_text() + (folder / "IMPORT.txt").read_text()
    names = []
    for path in files:
        if path.suffix == ".bat":
            names += [f"--{n}" for n in re.findall(r"--(\w+)", path.read_text())]
        else:
            data = tomllib.loads(path.read_text())
            tables = [data.get("general", {})] + data.get("datasets", [])
            tables += [s for d in data.get("datasets", []) for s in d.get("subsets", [])]
            names += [f" {k} = " for t in tables for k in t if k != "subsets"]
    missing = sorted({n for n in names if n not in written})
    assert not missing, f"flags neither mapped nor listed in IMPORT.txt: {missing}"


def test_guide_bat_and_outfit_toml_map_value_by_value(tmp_path, daemon):
    toml, source = may_with_real_dirs(tmp_path)
    folder = tmp_path / "inbox" / "may"
    result = import_files([BAT, toml], folder, daemon, wsl=False)
    # The .bat names Windows model paths that do not exist here: reported, and only that.
    assert all("model file not found here" in p for p in result.problems), result.problems
    config = job_of(folder)
    net, opt, sched, data, prec = config.network, config.optimizer, config.schedule, config.data, config.precision
    assert (net.dim, net.alpha) == (4, 4.0)
    assert (net.dropout, net.rank_dropout, net.module_dropout) == (0.1, 0.1, 0.1)
    assert opt.lr == 1e-4 and opt.type == "adamw8bit"
    assert opt.weight_decay == 0.11 and opt.betas == [0.9, 0.99]
    assert (sched.type, sched.cycles) == ("cosine_with_restarts", 3)
    assert sched.warmup_steps == 5 and sched.warmup_percent == 0.0  # --lr_warmup=5 is 5 steps
    assert sched.max_epochs == 60 and sched.max_steps is None
    assert not config.selection.stop_at_floor  # sd-scripts trains all 60 epochs
    assert (prec.mixed, prec.save, prec.gradient_checkpointing) == ("fp16", "fp16", True)
    assert net.train_text_encoder  # no --network_train_unet_only: sd-scripts trains the Qwen3 LoRA too
    assert net.scale_weight_norms == 1.0 and config.timesteps.ip_noise_gamma == 0.1
    assert config.timesteps.noise_offset == 0.0  # no effect in sd-scripts' Anima trainer: not copied
    assert config.seed == 0 and config.author == "RisingV"
    assert config.description.startswith("trigger words: 1girl, panchy") and config.name == "PanchyBriefs_anibase_v1"
    assert config.base_model == "anima_baseV10"
    # the dataset TOML: buckets, flip, keep_tokens 3, shuffle, tag dropout, class tokens, repeats
    assert (data.buckets, data.upscale, data.max_bucket, data.batch_size) == (True, False, 2048, 1)
    assert (data.shuffle_captions, data.keep_tokens, data.tag_dropout, data.flip) == (True, 3, 0.1, True)
    assert data.caption_extension == ".txt" and data.resolution == 1024
    assert {name: s.repeats for name, s in data.subsets.items()} == MAY_SUBSETS
    assert {s.class_tokens for s in data.subsets.values()} == {"may"}
    # each line names the flag it came from
    text = (folder / "job.yaml").read_text()
    assert "dim: 4  # train_panchybriefs_v1.bat: --network_dim=4" in text
    assert "--lr_warmup=5 (argparse reads it as --lr_warmup_steps)" in text
    assert "repeats: 4  # MayBikinis.toml [[datasets.subsets]] #6 num_repeats = 4" in text
    report = (folder / "IMPORT.txt").read_text()
    for flag in ("--min_snr_gamma", "--multires_noise_iterations", "--multires_noise_discount", "--noise_offset"):
        assert re.search(rf"{flag} .*no effect in sd-scripts' Anima trainer", report), flag
    assert "--num_cpu_threads_per_process" in report and "init_from" in report
    every_flag_accounted_for(folder, [BAT, MAY])
    # copied, never moved: the sd-scripts folders are untouched, the copies identical, the latent cache left out
    for name in MAY_SUBSETS:
        for image in (source / name).glob("*.png"):
            copy = folder / name / image.name
            assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()
            assert (folder / name / image.with_suffix(".txt").name).is_file()
    assert (source / "MayRedBikini" / "img000_anima.npz").is_file()
    assert not (folder / "MayRedBikini" / "img000_anima.npz").exists()
    assert "1 .npz" in report and result.copied == {name: 4 for name in MAY_SUBSETS}
    checked = check_folder(folder, daemon)
    assert checked.ok, checked.report()
    assert checked.dataset.samples_per_epoch() == 2 * sum(MAY_SUBSETS.values())


def test_nami_dataset_toml_alone_passes_check(tmp_path, daemon, monkeypatch):
    folder = tmp_path / "nami"
    folder.mkdir()
    monkeypatch.chdir(folder)
    result = import_files([NAMI], None, daemon, wsl=False)  # no --to: job.yaml and IMPORT.txt here, no copy
    assert result.problems == [] and result.copied == {}
    config = job_of(folder)
    data = config.data
    assert (data.buckets, data.upscale, data.keep_tokens, data.shuffle_captions) == (False, False, 2, True)
    assert (data.tag_dropout, data.flip, data.caption_extension) == (0.1, False, ".txt")
    assert data.subsets["NamiSyrup_v3"].class_tokens == "nami" and data.subsets["NamiSyrup_v3"].repeats == 1
    assert "NamiSyrup_v3/  <- copy the images and captions" in (folder / "IMPORT.txt").read_text()
    # no launch file: the training settings stay animad's
    assert config.optimizer.type == "prodigy" and config.selection.stop_at_floor
    every_flag_accounted_for(folder, [NAMI])
    make_dataset(folder, subsets={"NamiSyrup_v3": 3})
    checked = check_folder(folder, daemon)
    assert checked.ok, checked.report()


def draft_to_job(folder: Path) -> None:
    """What IMPORT.txt tells the user once the images are in: rename the draft to job.yaml."""
    assert not (folder / "job.yaml").exists() and "rename it to job.yaml" in (folder / "IMPORT.txt").read_text()
    (folder / "job.draft.yaml").rename(folder / "job.yaml")


def test_guide_bat_alone_and_outfit_toml_alone_pass_check(tmp_path, daemon):
    # No images anywhere: --to leaves a draft (the folder cannot train yet), never a job.yaml.
    bat_folder = tmp_path / "panchy"
    result = import_files([BAT], bat_folder, daemon, wsl=False)
    assert any("dataset config named by" in p and "panchybriefs_v1.toml" in p for p in result.problems)
    make_dataset(bat_folder, count=3)
    draft_to_job(bat_folder)
    config = job_of(bat_folder)
    assert config.network.dim == 4 and config.data.caption_extension == ".txt"  # dataset keys unknown: untouched
    every_flag_accounted_for(bat_folder, [BAT])
    assert check_folder(bat_folder, daemon).ok
    may_folder = tmp_path / "may"
    import_files([MAY], may_folder, daemon, wsl=False)
    make_dataset(may_folder, subsets={name: 1 for name in MAY_SUBSETS})
    draft_to_job(may_folder)
    every_flag_accounted_for(may_folder, [MAY])
    checked = check_folder(may_folder, daemon)
    assert checked.ok, checked.report()


def test_missing_image_dir_is_reported_not_a_crash(tmp_path, daemon_config, capsys):
    folder = tmp_path / "inbox" / "may"
    code = main(["--config", str(daemon_config), "import", str(MAY), "--to", str(folder)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("image_dir not found") == 6 and "a Windows path: run animad import inside WSL" in out
    # no images: a watching daemon must not take the folder, so the job waits as a draft it ignores
    assert not (folder / "job.yaml").exists() and (folder / "job.draft.yaml").is_file()
    assert "job.draft.yaml" in out and "MISSING" in (folder / "IMPORT.txt").read_text()
    # never overwrites: a second import into the same folder is refused, the files stay
    before = (folder / "job.draft.yaml").read_bytes()
    assert main(["--config", str(daemon_config), "import", str(MAY), "--to", str(folder)]) == 2
    assert "never overwrites" in capsys.readouterr().err and (folder / "job.draft.yaml").read_bytes() == before


def test_windows_paths_go_through_the_wsl_mount(tmp_path):
    version = tmp_path / "version"
    version.write_text("Linux version 5.15.153.1-microsoft-standard-WSL2 (gcc ...)\n")
    assert running_under_wsl(version)
    version.write_text("Linux version 6.8.0-45-generic (buildd@lcy02-amd64)\n")
    assert not running_under_wsl(version)
    assert local_path("C:\\path\\to\\May Pink", tmp_path, wsl=True) == Path("/mnt/c/path/to/May Pink")
    assert local_path("D:/sets/nami", tmp_path, wsl=True) == Path("/mnt/d/sets/nami")
    assert local_path("./img", tmp_path, wsl=True) == tmp_path / "img"


def test_launch_files_as_shells_write_them(tmp_path):
    sh = tmp_path / "train.sh"
    sh.write_text("#!/bin/sh\n# comment\naccelerate launch --mixed_precision bf16 anima_train_network.py \\\n"
                  "  --network_dim 8 --network_alpha=8 \\\n  --optimizer_type prodigy "
                  "--optimizer_args \"d_coef=0.5\" safeguard_warmup=True \\\n"
                  "  --lr_warmup 0.1 --output_name 'my lora' --max_train_st 900 --bogus_flag=1 --net 3\n")
    sources = read_sources([sh])
    flags = {k: f.value for k, f in sources.flags.items()}
    assert flags["network_dim"] == 8 and flags["network_alpha"] == 8.0 and flags["output_name"] == "my lora"
    assert flags["optimizer_args"] == ["d_coef=0.5", "safeguard_warmup=True"]
    assert flags["lr_warmup_steps"] == 0.1 and flags["max_train_steps"] == 900  # argparse prefixes
    assert sources.accelerate == ["--mixed_precision bf16"]
    assert [f.name for f in sources.unknown] == ["bogus_flag", "net"]
    assert any("ambiguous" in p and "--net" in p for p in sources.problems)
    ps1 = tmp_path / "train.ps1"
    ps1.write_text("python anima_train_network.py `\r\n  --network_dim=16 `\r\n"
                   "  --pretrained_model_name_or_path 'C:\\models\\anima base.safetensors' `\r\n  --gradient_checkpointing\r\n")
    flags = {k: f.value for k, f in read_sources([ps1]).flags.items()}
    assert flags == {"network_dim": 16, "pretrained_model_name_or_path": "C:\\models\\anima base.safetensors",
                     "gradient_checkpointing": True}
    assert (int_or_float("5"), int_or_float("0.05"), int_or_float("10%")) == (5, 0.05, 0.1)


def test_config_file_toml_sectioned_and_the_command_line_wins(tmp_path, daemon):
    config = tmp_path / "config.toml"
    config.write_text("[model_arguments]\npretrained_model_name_or_path = 'anima.safetensors'\n"
                      "[network_arguments]\nnetwork_dim = 16\nnetwork_alpha = 8\nnetwork_train_unet_only = true\n"
                      "network_args = ['train_llm_adapter=True', 'loraplus_lr_ratio=4']\n"
                      "[optimizer_arguments]\noptimizer_type = 'AdamW'\nlearning_rate = 5e-5\n"
                      "lr_scheduler = 'cosine'\nlr_warmup_steps = 0.05\n"
                      "text_encoder_lr = 1e-5\n"
                      "[training_arguments]\nmax_train_steps = '3000'\nmixed_precision = 'bf16'\n")
    bat = tmp_path / "run.bat"
    bat.write_text(f"accelerate launch anima_train_network.py --config_file=\"{config}\" --network_dim=32\r\n")
    folder = tmp_path / "job"
    result = import_files([bat], folder, daemon, wsl=False)
    job = job_of(folder)
    assert job.network.dim == 32 and job.network.alpha == 8.0  # the command line wins over the config file
    assert not job.network.train_text_encoder and job.network.train_llm_adapter
    assert job.optimizer.type == "adamw" and job.optimizer.lr == 5e-5 and job.optimizer.text_encoder_lr == 1e-5
    assert job.optimizer.weight_decay == 0.01 and job.optimizer.betas == [0.9, 0.999]  # AdamW's own defaults
    assert job.schedule.type == "cosine" and job.schedule.warmup_percent == 0.05 and job.schedule.warmup_steps == 0
    assert job.schedule.max_steps == 3000 and job.precision.mixed == "bf16" and job.precision.save == "fp32"
    # sd-scripts' defaults where ours differ, since the files do not say
    assert (job.data.shuffle_captions, job.data.keep_tokens, job.data.caption_extension) == (False, 0, ".caption")
    assert (job.data.buckets, job.data.max_bucket, job.data.upscale) == (False, 1024, True)
    assert not job.precision.gradient_checkpointing
    report = (folder / "IMPORT.txt").read_text()
    assert "--network_args loraplus_lr_ratio" in report
    assert yaml.safe_load(job_file_of(folder).read_text())["schedule"]["warmup_percent"] == 0.05
    assert any("model file not found" in p for p in result.problems)


def test_more_than_one_launch_file_is_refused(tmp_path, daemon):
    other = tmp_path / "run2.bat"
    other.write_text("accelerate launch anima_train_network.py --network_dim=4\r\n")
    with pytest.raises(UserError, match="one launch file is one job"):
        import_files([BAT, other], tmp_path / "job", daemon, wsl=False)


def test_train_data_dir_folders_become_subsets_with_their_repeats(tmp_path, daemon):
    # sd-scripts' DreamBooth layout: '5_nami girl' is 5 repeats, and 'nami girl' captions uncaptioned images
    source = make_dataset(tmp_path / "train", subsets={"5_nami girl": 2, "2_outfit": 2, "no_prefix_here": 1})
    (source / "5_nami girl" / "img000.txt").unlink()
    sh = tmp_path / "train.sh"
    sh.write_text(f"accelerate launch anima_train_network.py --train_data_dir='{source}' --resolution=64,64 "
                  "--shuffle_caption --keep_tokens=1 --network_train_unet_only --caption_extension=.txt\n")
    folder = tmp_path / "job"
    result = import_files([sh], folder, daemon, wsl=False)
    assert result.copied == {"5_nami girl": 3, "2_outfit": 4}  # 2 images + their captions (one caption missing)
    job = job_of(folder)
    assert {k: (s.repeats, s.class_tokens) for k, s in job.data.subsets.items()} == {
        "5_nami girl": (5, "nami girl"), "2_outfit": (2, "outfit")}
    assert job.data.resolution == 64 and job.data.shuffle_captions and job.data.keep_tokens == 1
    assert not job.network.train_text_encoder
    assert "no_prefix_here has no 'N_' repeats prefix" in (folder / "IMPORT.txt").read_text()


def test_every_option_of_the_trainer_is_mapped_or_has_its_own_reason(tmp_path, daemon):
    # A launch file with all of anima_train_network.py's options: none may crash the import, none may be
    # dropped, and none may fall through to the generic "no setting" reason.
    realistic = {"resolution": "64,64", "mixed_precision": "bf16", "save_precision": "fp16", "lr_scheduler": "cosine",
                 "timestep_sampling": "shift", "optimizer_type": "AdamW", "caption_extension": ".txt",
                 "attn_mode": "torch", "network_args": "rank_dropout=0.1", "optimizer_args": "weight_decay=0.05"}
    words = []
    for name in sorted(ALL):
        if name in BOOL:
            words.append(f"--{name}")
        else:
            value = realistic.get(name) or ("1" if name in INT | INT_OR_FLOAT else "0.5" if name in FLOAT else
                                            "a=1" if name in LIST else "missing-thing")
            words.append(f"--{name}={value}")
    bat = tmp_path / "all.bat"
    bat.write_text("accelerate launch anima_train_network.py ^\r\n  " + " ^\r\n  ".join(words) + "\r\n")
    folder = tmp_path / "job"
    result = import_files([bat], folder, daemon, wsl=False)
    generic = [u.flag for u in result.translation.unmapped if u.reason == "animad has no setting for it"]
    assert not generic
    written = job_file_of(folder).read_text() + (folder / "IMPORT.txt").read_text()
    assert not [name for name in ALL if f"--{name}" not in written]
    job_of(folder)  # and the job.yaml it wrote is valid
