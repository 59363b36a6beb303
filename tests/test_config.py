"""job.yaml: good defaults from an empty file, and every problem reported at once, never a traceback."""

from __future__ import annotations

import subprocess
import sys

from animad.config.job import JobConfig, load_job_file, parse_job
from animad.config.problems import Problems


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
    assert config.schedule.type == "cosine" and config.schedule.max_epochs == 200
    assert config.data.resolution == 1024 and config.data.batch_size == 4 and config.data.keep_tokens == 1
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
    problems = Problems()
    config = load_job_file(example, problems)
    assert config is not None and not problems.items
