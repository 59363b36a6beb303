"""job.yaml: good defaults from an empty file, and every problem reported at once, never a traceback."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from animad.config.job import JobConfig, example_text, load_job_file, parse_job
from animad.config.problems import Problems
from animad.train.optim import schedule_kind


def parse(data):
    problems = Problems()
    config = parse_job(data, "job.yaml", problems)
    return config, problems


def test_empty_job_yaml_gives_the_guides_defaults(tmp_path):
    (tmp_path / "job.yaml").write_text("")
    problems = Problems()
    config = load_job_file(tmp_path / "job.yaml", problems)
    assert not problems.items
    assert config.network.dim == 16 and config.network.alpha is None
    assert config.network.targets == ["self_attn", "cross_attn", "mlp"] and not config.network.train_llm_adapter
    assert config.optimizer.type == "prodigy" and config.optimizer.weight_decay == 0.1
    assert config.schedule.type == "auto" and config.schedule.max_epochs == 200
    # auto: constant then cooled at the floor with stop-at-floor on (bench/schedule_quality.py), else cosine
    assert schedule_kind(config.schedule, config.selection) == "constant"
    assert schedule_kind(config.schedule, dataclasses.replace(config.selection, stop_at_floor=False)) == "cosine"
    assert config.data.resolution == 1024 and config.data.batch_size == "auto" and config.data.keep_tokens == 1
    assert config.data.shuffle_captions and config.precision.gradient_checkpointing
    assert config.timesteps.sampling == "logit_normal" and config.previews.cfg == 4.0
    assert config.previews.steps == 30 and config.previews.flow_shift == 3.0
    assert config.selection.stop_at_floor and config.selection.shortlist_size == 4 and config.seed == 0


def test_every_problem_is_reported_with_key_and_fix():
    _, problems = parse({
        "netwrok": {"dim": 8},
        "network": {"dim": 0, "targets": ["mlp", "attn"]},
        "optimizer": {"type": "prodigi", "betas": [0.9]},
        "data": {"resolution": 1000, "batch_size": "four"},
        "previews": {"width": 1000},
    })
    lines = [p.line() for p in problems.errors]
    text = "\n".join(lines)
    assert len(problems.errors) == 8, text
    assert "optimizer.betas: needs exactly two values" in text
    assert "netwrok: unknown key" in text and "did you mean 'network'?" in text
    assert "network.dim: 0 is below the minimum 1" in text
    assert "network.targets[1]" in text
    assert "optimizer.type" in text and "did you mean 'prodigy'" in text
    assert "data.resolution: 1000 is not a multiple of 16" in text
    assert "data.batch_size: 'four' is not a whole number" in text
    assert "previews.width" in text
    assert all("->" in line for line in lines)  # each says what to do
    assert all(p.file == "job.yaml" for p in problems.errors)


def test_yaml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "job.yaml").write_text("network:\n  dim: 8\n   alpha: 4\n")
    problems = Problems()
    assert load_job_file(tmp_path / "job.yaml", problems) is None
    (error,) = problems.errors
    assert "line 3" in error.where and "not valid YAML" in error.message


def test_hostile_yaml_is_refused_safely(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    cases = {
        "python tag": "name: !!python/object/apply:os.system ['echo pwned']\n",
        "alias bomb": bomb,
        "duplicate key": "trigger: a\ntrigger: b\n",
        "not a mapping": "- just\n- a list\n",
        "not utf-8": b"trigger: \xff\xfe\n",
    }
    for label, text in cases.items():
        path = tmp_path / "job.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        problems = Problems()
        assert load_job_file(path, problems) is None, label
        assert problems.errors, label


def test_huge_yaml_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("description: '" + "x" * (2 << 20) + "'\n")
    problems = Problems()
    assert load_job_file(path, problems) is None
    assert "limit" in problems.errors[0].message


def test_single_values_are_accepted_where_lists_are_expected():
    config, problems = parse({"previews": {"prompts": "one prompt", "seeds": 7}, "network": {"targets": "mlp"}})
    assert not problems.errors
    assert config.previews.prompts == ["one prompt"] and config.previews.seeds == [7]
    assert config.network.targets == ["mlp"]


def test_animad_check_prints_all_problems_without_traceback(tmp_path):
    from PIL import Image

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "job.yaml").write_text("netwrok: {dim: 8}\ndata: {batch_size: 0}\n")
    Image.new("RGB", (64, 64), "red").save(folder / "good.png")
    (folder / "good.txt").write_text("@x, red")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    result = subprocess.run([sys.executable, "-m", "animad", "check", str(folder)], capture_output=True, text=True,
                            cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in out
    assert "netwrok: unknown key" in out and "data.batch_size" in out and "broken.png" in out


def test_template_documents_every_key():
    from animad.config.schema import template

    text = template(JobConfig)
    for key in ("dim:", "alpha:", "max_epochs:", "keep_tokens:", "stop_at_floor:", "flow_shift:", "sampling:"):
        assert key in text


def test_example_job_yaml_is_in_sync_and_valid():
    from pathlib import Path

    from animad.config.schema import template

    example = Path(__file__).resolve().parent.parent / "inbox" / "job.example.yaml"
    text = example.read_text()
    assert template(JobConfig) in text, "regenerate inbox/job.example.yaml from animad.config.schema.template"
    assert text == example_text(), "regenerate inbox/job.example.yaml from animad.config.job.example_text"
    problems = Problems()
    config = load_job_file(example, problems)
    assert config is not None and not problems.items


def test_auto_batch_size_follows_the_guides_ten_percent_rule():
    from animad.config.job import auto_batch_size

    assert [auto_batch_size(n) for n in (0, 1, 9, 19, 20, 29, 30, 39, 40, 41, 1000)] == [
        1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert all(auto_batch_size(n) <= max(1, n // 10) for n in range(500))  # never over 10%


def freeze(tmp_path, images: int, data: dict | None = None):
    """Check a folder of `images` images the way intake does and write its job files; return the resolved config."""
    import yaml
    from PIL import Image

    from animad.config.job import load_resolved
    from animad.intake.check import CheckResult
    from animad.intake.dataset import scan_dataset
    from animad.intake.jobfiles import write_job_files
    from animad.layout import JobPaths

    folder = tmp_path / f"set{images}"
    folder.mkdir()
    (folder / "job.yaml").write_text(yaml.safe_dump({"data": data} if data else {}))
    for n in range(images):
        Image.new("RGB", (64, 64), (n, 0, 0)).save(folder / f"{n:03d}.png")
        (folder / f"{n:03d}.txt").write_text("@t, red")
    problems = Problems()
    config = load_job_file(folder / "job.yaml", problems)
    dataset = scan_dataset(folder, config, problems)
    paths = JobPaths(tmp_path / f"job{images}")
    paths.root.mkdir()
    write_job_files(paths, CheckResult(folder, config, problems, dataset, None))
    written = yaml.safe_load(paths.resolved.read_text())["data"]["batch_size"]
    return load_resolved(paths.resolved), written, problems


def test_auto_batch_size_is_a_number_in_the_resolved_job(tmp_path):
    small, written, problems = freeze(tmp_path, 6)
    assert small.data.batch_size == 1 and written == 1
    assert not [p for p in problems.items if p.where == "data.batch_size"]  # auto never warns
    large, written, _ = freeze(tmp_path, 45)
    assert large.data.batch_size == 4 and written == 4
    explicit, written, problems = freeze(tmp_path, 30, {"batch_size": 2})
    assert explicit.data.batch_size == 2 and written == 2
    assert not [p for p in problems.items if p.where == "data.batch_size"]  # 2 of 30 is within 10%


def test_bad_batch_size_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data: {batch_size: big}\n")
    problems = Problems()
    load_job_file(path, problems)
    (error,) = problems.errors
    assert (error.file, error.where) == (str(path), "data.batch_size")
    assert "'big' is not a whole number or 'auto'" in error.message and "auto" in error.fix
    _, problems = parse({"data": {"batch_size": 0}})
    assert [p.message for p in problems.errors] == ["0 is below the minimum 1"]  # not "not a whole number"
    _, problems = parse({"data": {"batch_size": True}})
    assert problems.errors and "whole number or 'auto'" in problems.errors[0].message


def test_a_resolved_job_must_hold_a_number(tmp_path):
    import pytest

    from animad.config.job import load_resolved
    from animad.config.problems import ConfigError

    path = tmp_path / "job.resolved.yaml"
    path.write_text("data: {batch_size: auto}\n")
    with pytest.raises(ConfigError) as raised:
        load_resolved(path)
    assert "data.batch_size" in str(raised.value) and "not resolved to a number" in str(raised.value)


def test_retired_cache_latents_warns_and_still_loads(tmp_path):
    from animad.config.job import load_resolved

    config, problems = parse({"precision": {"cache_latents": False, "compile": True}})
    assert not problems.errors and config.precision.compile
    (warning,) = problems.warnings
    assert warning.where == "precision.cache_latents" and "always cached" in warning.message
    assert not hasattr(config.precision, "cache_latents")
    # A job frozen before the key went (its job.resolved.yaml still says it) loads as it did.
    path = tmp_path / "job.resolved.yaml"
    path.write_text("precision: {cache_latents: true}\ndata: {batch_size: 2}\n")
    assert load_resolved(path).data.batch_size == 2


def option_helps():
    """(section, key, default, help) for every option of job.yaml and animad.yaml."""
    import dataclasses
    import typing

    from animad.config.daemon import DaemonConfig
    from animad.config.job import SubsetConfig

    def walk(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("section"):
                yield from walk(hints[f.name])
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield cls.__name__, f.name, default, f.metadata["help"]

    for root in (JobConfig, SubsetConfig, DaemonConfig):
        yield from walk(root)


def test_every_option_says_what_its_default_is_and_why():
    import re

    def names_default(default, text):
        if default is None:
            return "null" in text
        if isinstance(default, bool):
            return re.search(r"\b(On|Off|on|off)\b", text) is not None
        if isinstance(default, dict):
            return "default" in text or "Empty" in text
        if isinstance(default, (list, str)) and not default:
            return "Empty" in text or "empty" in text
        if isinstance(default, list):
            return all(str(item) in text for item in default) or "All three" in text
        if isinstance(default, float):
            return any(s in text for s in (f"{default:g}", str(default), f"{default:.0e}".replace("e-0", "e-")))
        return str(default) in text

    helps = list(option_helps())
    assert len(helps) > 100
    for section, key, default, text in helps:
        where = f"{section}.{key}: {text!r}"
        # What the option is, then why its default is what it is: at least two clauses.
        assert len([part for part in re.split(r"(?<=[.;:])\s+", text) if part]) >= 2, where
        assert names_default(default, text), where
    assert len({text for *_, text in helps}) == len(helps), "two options share a help text"
    # The defaults the issue named cite their source: a guide, the spec, a measurement or ComfyUI.
    cited = {(s, k): t for s, k, _, t in helps}
    for key, source in {("NetworkConfig", "dim"): "guide", ("DataConfig", "batch_size"): "10%",
                        ("OptimizerConfig", "weight_decay"): "guide", ("SelectionConfig", "patience"): "bench/",
                        ("DaemonConfig", "settle_seconds"): "spec", ("PreviewConfig", "cfg"): "ComfyUI",
                        ("PreviewConfig", "steps"): "ComfyUI"}.items():
        assert source in cited[key], key


def test_templates_show_the_why():
    from animad.config.daemon import init_text

    daemon_text, job_text = init_text(), example_text()
    assert "TensorBoard's own default" in daemon_text and "settle_seconds: 30.0" in daemon_text
    assert "images // 10" in job_text and "batch_size: auto" in job_text and "cache_latents" not in job_text
    assert all(len(line) <= 100 for line in (daemon_text + job_text).splitlines() if line.lstrip().startswith("#"))
