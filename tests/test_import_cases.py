"""animad import carries over real-world shapes of sd-scripts configs (issue 19): launch files with
variables, positional defaults, arrays, heredocs and bad quoting, GUI presets, kohya_ss .json,
LoKr/LoHa/other networks, optimizers animad lacks, shadowed flags and foreign paths.

Each case (tests/fixtures/import-cases, see tests/import_cases.py) is imported as a user would, into an
empty folder with `animad import FILES`: job.yaml and IMPORT.txt written, no traceback, the stated
values under our keys, every stated key named, no unexpanded variable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from animad.cli.main import main
from animad.config.daemon import load_daemon_config
from animad.config.job import load_job_file
from animad.config.problems import Problems
from animad.demo.synthetic import make_dataset
from animad.importer.folder import import_files
from animad.intake.check import check_folder
from import_cases import CASES, case_names, failures, files_of


@pytest.mark.parametrize("name", case_names())
def test_case_comes_over(name, tmp_path, daemon_config, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    code = main(["--config", str(daemon_config), "import", *map(str, files_of(name))])
    printed = capsys.readouterr()
    assert code in (0, 1), printed.err
    assert failures(name, out, printed.out + printed.err) == []
    problems = Problems()
    load_job_file(out / "job.yaml", problems)  # valid as the daemon reads it
    assert not problems.errors, problems.render("job.yaml")


def test_every_shape_is_covered():
    # launch files of each shell, TOMLs flat and in sections, both GUIs' presets
    suffixes = {f.suffix for name in case_names() for f in files_of(name)}
    assert {".bat", ".sh", ".ps1", ".toml", ".json"} <= suffixes and len(case_names()) >= 14


def test_imported_lokr_job_passes_check_with_its_images_copied(tmp_path, daemon_config):
    # The SD-Trainer LoKr preset names no images; the kohya_ss one names a train_data_dir. Give it one
    # here, import with --to into the inbox: copied, checked, and job.yaml written since it can train.
    daemon = load_daemon_config(daemon_config)
    source = make_dataset(tmp_path / "datasets" / "frieren", subsets={"4_frieren": 2})
    preset = tmp_path / "preset.json"
    text = (CASES / "kohya-json-lokr" / "anima_lokr_kohya.json").read_text()
    preset.write_text(text.replace("/home/user/datasets/frieren", str(source)))
    folder = daemon.dir("inbox") / "frieren"
    result = import_files([preset], folder, daemon, wsl=False)
    assert result.job_file == folder / "job.yaml" and not (folder / "job.draft.yaml").exists()
    config = load_job_file(folder / "job.yaml", Problems())
    assert (config.network.type, config.network.factor) == ("lokr", 8)
    checked = check_folder(folder, daemon)
    assert checked.ok, checked.report()
    assert "IMPORT.txt" not in checked.report()  # the importer's report is never read as a caption


def test_foreign_paths_into_the_inbox_leave_a_draft_and_say_what_to_copy(tmp_path, daemon_config, capsys):
    daemon = load_daemon_config(daemon_config)
    folder = daemon.dir("inbox") / "marisa"
    code = main(["--config", str(daemon_config), "import", *map(str, files_of("foreign-paths")), "--to", str(folder)])
    out = capsys.readouterr().out
    assert code == 1 and "Traceback" not in out
    assert not (folder / "job.yaml").exists() and (folder / "job.draft.yaml").is_file()  # the daemon ignores it
    report = (folder / "IMPORT.txt").read_text()
    assert "MISSING: /home/friend/lora/img/marisa was not found" in report and "rename it to job.yaml" in report
    # model files not here: the user's own default set, with the paths it replaced
    draft = yaml.safe_load((folder / "job.draft.yaml").read_text())
    assert draft["base_model"] == daemon.config.default_model
    assert "/home/friend/ComfyUI/models/diffusion_models/anima-base-v1.0.safetensors (NOT HERE) ->" in report
    # the user copies the images in and renames the draft: the job can train
    make_dataset(folder, subsets={"marisa": 2, "marisa_witch": 1})
    (folder / "job.draft.yaml").rename(folder / "job.yaml")
    checked = check_folder(folder, daemon)
    assert checked.ok, checked.report()


def test_model_files_not_here_use_the_users_set_with_the_same_file_names(tmp_path, daemon_config):
    config = yaml.safe_load(Path(daemon_config).read_text())
    tiny = config["models"][config["default_model"]]
    named = tmp_path / "mine"
    named.mkdir()
    for key, file in (("dit", "anima-base-v1.0.safetensors"), ("text_encoder", "qwen_3_06b_base.safetensors"),
                      ("vae", "qwen_image_vae.safetensors")):
        shutil.copy(tiny[key], named / file)
    config["models"]["mine"] = {k: str(named / f) for k, f in (("dit", "anima-base-v1.0.safetensors"),
                                                               ("text_encoder", "qwen_3_06b_base.safetensors"),
                                                               ("vae", "qwen_image_vae.safetensors"))}
    path = tmp_path / "animad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = import_files(files_of("foreign-paths"), tmp_path / "job", load_daemon_config(path), wsl=False)
    job = yaml.safe_load(result.job_file.read_text())
    assert job["base_model"] == "mine"
    assert all("your model set 'mine', whose files have the same names" in p for p in result.problems
               if "model file not found here" in p)


def test_a_failure_of_the_importer_on_one_file_is_a_problem_not_a_traceback(tmp_path, daemon_config, monkeypatch,
                                                                             capsys):
    # Fault injection: the GUI reader breaks on the preset. The launch file beside it still imports.
    import animad.importer.read as read

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(read, "read_gui_preset", broken)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    files = [CASES / "kohya-json-lokr" / "anima_lokr_kohya.json", CASES / "sh-heredoc-dataset" / "run_training.sh"]
    code = main(["--config", str(daemon_config), "import", *map(str, files)])
    printed = capsys.readouterr()
    assert code == 1 and "Traceback" not in printed.out + printed.err
    assert "animad import failed on it (RuntimeError: simulated bug)" in (out / "IMPORT.txt").read_text()
    assert yaml.safe_load((out / "job.yaml").read_text())["name"] == "hatsune_miku"
