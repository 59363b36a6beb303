"""The floor plan holds (issue 9): imports go one way, and only animad/anima/ knows Anima.

Static, from the source (tests/import_graph.py reads every import, inside functions too); nothing is
imported or run. Layers, bottom first: ground < anima < config < intake < importer < train < select <
daemon < demo < cli; each may import only the layers below it, and only cli imports the importer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from import_graph import LAYERS, layer_of, module_circles, package_circles, read_graph, upward_imports

PACKAGE = Path(__file__).resolve().parent.parent / "animad"
TESTS = Path(__file__).resolve().parent

# What only animad/anima/ may say: Anima's key names, LoRA names, file ids, tokens and shapes. Each
# pattern names the fact, not a word users see (the `train_llm_adapter` option, ComfyUI's
# models/diffusion_models/ folder or the configs/qwen3_06b tokenizer folder in help texts are fine).
ANIMA_FACTS = [
    (r"llm_adapter\.", "the LLM adapter's key prefix"),
    (r"\blora_unet", "the DiT's LoRA name prefix"),
    (r"\blora_te(?![a-z])", "the text encoder's LoRA name prefix"),
    (r"[\"']net\.|diffusion_model\.", "a DiT checkpoint key prefix"),
    (r"text_encoders\.qwen3_06b|transformer\.model\.", "a text-encoder checkpoint key prefix"),
    (r"self_attn\.|cross_attn\.|mlp\.layer[12]|\b(blocks|layers)\\?\.(\\d|\d)", "a module path inside the models"),
    (r"networks\.lora_anima|anima-preview|modelspec\.architecture", "a LoRA file's Anima ids"),
    (r"<\|(endoftext|im_start|im_end)\|>", "a Qwen special token"),
    (r"\bsentencepiece\b", "the T5 tokenizer library"),
    (r"\b(Qwen3Model|Qwen3Config|AnimaTextConditioner|AutoencoderKLQwenImage)\b", "a model class"),
    (r"\b512\b[^\n]{0,30}\b(rows?|context|pad)|\b(rows?|context|pad)\w*\b[^\n]{0,30}\b512\b", "the 512-row context"),
    (r"\b16\s*,\s*\w+\s*//\s*8|//\s*8\s*,\s*\w+\s*//\s*8", "the latent shape"),
    (r"[\"'](qwen|t5_ids)[\"']|\.(qwen|t5_ids)\b", "a part of the text embedding"),
]


# What only the network kinds (animad/train/networks/, and the shape arithmetic in animad/network_shapes.py)
# may say: a kind's tensor keys. The rest of animad asks a kind (train/networks/kind.py), so a new kind
# is one module there, and none of its names leak into the loop, the checkpoints or the previews.
KIND_HOMES = ("train/networks/", "network_shapes.py")
KIND_FACTS = [(r"\blora_(down|up)\b|\blora_[AB]\b|\blokr_[wt]\d|\bhada_[wt]\d", "a network kind's tensor key")]


def layout_problems(package: Path) -> list[str]:
    graph = read_graph(package)
    problems = [f"module circle: {'; '.join(map(str, c))}" for c in module_circles(graph)]
    problems += [f"package circle {' <-> '.join(layers)}: {'; '.join(map(str, upward))}"
                 for layers, upward in package_circles(graph)]
    problems += [f"upward import: {i} ({layer_of(i.source)} may not import {layer_of(i.target)}, a layer above it)"
                 for i in upward_imports(graph)]
    problems += [f"hidden import: {call}" for call in graph.hidden]
    return problems


def anima_mentions(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        facts = [] if relative.startswith("anima/") else list(ANIMA_FACTS)
        facts += [] if relative.startswith(KIND_HOMES) else KIND_FACTS
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(package.parent)}:{number}: {what}: {line.strip()}"
                      for pattern, what in facts if re.search(pattern, line)]
    return found


def imports_of_test_modules(tests: Path) -> list[str]:
    """Every place a module in tests/ imports a test module (inside functions too): shared helpers live in
    helper modules (conftest.py, train_helpers.py, ...), so running or renaming one test file moves no other."""
    found = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                    "__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
                names = [str(node.args[0].value)]
            else:
                continue
            found += [f"{path.relative_to(tests.parent)}:{node.lineno}: imports {name}"
                      for name in names if name.split(".")[0].startswith("test_")]
    return found


def test_imports_go_one_way():
    problems = layout_problems(PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_package_has_a_layer():
    # A new package must take its place in LAYERS (and in the order) before the rules can judge it.
    unplaced = {layer_of(m) for m in read_graph(PACKAGE).modules} - set(LAYERS)
    assert not unplaced, f"packages without a layer in tests/import_graph.py LAYERS: {sorted(unplaced)}"


def test_the_importer_is_a_side_room():
    # animad/importer/ turns sd-scripts files into a job folder; the daemon, training and selection
    # take that folder like any other, so only the CLI's import verb may reach into it.
    graph = read_graph(PACKAGE)
    callers = sorted(str(i) for i in graph.imports
                     if layer_of(i.target) == "importer" and layer_of(i.source) not in ("importer", "cli"))
    assert not callers, "\n".join(callers)
    assert any(layer_of(m) == "importer" for m in graph.modules)  # the rule judges a package that exists


def test_only_the_anima_package_knows_anima_and_only_the_network_kinds_know_their_keys():
    found = anima_mentions(PACKAGE)
    assert not found, "\n".join(found)


def test_the_checks_catch_what_they_forbid(tmp_path):
    # A small package with one of each violation: the rules above must name every one.
    package = tmp_path / "animad"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "anima/__init__.py": "",
        "anima/face.py": "def f():\n    from animad.train import evaluation\n",  # upward, inside a function
        "anima/facts.py": "",
        "train/__init__.py": "",
        "train/evaluation.py": "",
        "train/loop.py": "from animad.anima import facts\nfrom animad.train.ranks import x\n",
        "train/ranks.py": "import animad.train.loop\nx = 'lora_unet_blocks_0'\n",
        "train/networks/lokr.py": "parts = ('lokr_w1', 'lokr_w2')\n",  # a kind's own keys: fine here
        "select/previews.py": "key = name + '.hada_w1_a'\n",
        "train/caches.py": "y = {'qwen': e.qwen}\nfolder = tokenizers / 'qwen3'  # a folder name, fine\n",
        "config/__init__.py": "",
        "config/job.py": "import importlib\nm = importlib.import_module('animad.cli.main')\n"
                         "train_llm_adapter = True  # an option name, not a key\n",
        "cli/__init__.py": "",
        "cli/main.py": "from animad.errors import *\nfrom animad.config import job\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    problems = layout_problems(package)
    assert problems == [
        "module circle: animad/train/loop.py:2 (animad.train.loop) imports animad.train.ranks; "
        "animad/train/ranks.py:1 (animad.train.ranks) imports animad.train.loop",
        "package circle anima <-> train: animad/anima/face.py:2 (animad.anima.face) imports animad.train.evaluation",
        "upward import: animad/anima/face.py:2 (animad.anima.face) imports animad.train.evaluation "
        "(anima may not import train, a layer above it)",
        "hidden import: animad/config/job.py:2: importlib.import_module('animad.cli.main')",
    ]  # and cli importing ground and config is fine
    assert anima_mentions(package) == [
        "animad/select/previews.py:1: a network kind's tensor key: key = name + '.hada_w1_a'",
        "animad/train/caches.py:1: a part of the text embedding: y = {'qwen': e.qwen}",
        "animad/train/ranks.py:2: the DiT's LoRA name prefix: x = 'lora_unet_blocks_0'"]


# The files saying how a job's training ended: opened only through JobPaths (animad/layout.py), so the
# record has one writer and one reader, and nobody reads facts out of the sentence.
ENDING_FILES = ("finished.txt", "ending.json")
LOOP = PACKAGE / "train" / "loop.py"
LOSS = "flow_loss"
# One-line functions the loop keeps on purpose: the step's host read (bench/step_counts.py counts it there).
LOOP_SEAMS = {"host_values"}


def code_strings(tree: ast.AST) -> list[ast.Constant]:
    """The string constants of a module that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def ending_file_mentions(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).as_posix() == "layout.py":
            continue
        for node in code_strings(ast.parse(path.read_text(), str(path))):
            found += [f"{path.relative_to(package.parent)}:{node.lineno}: names {name}"
                      for name in ENDING_FILES if name in node.value]
    return found


def thin_wrappers(tree: ast.Module) -> list[str]:
    """Module-level functions whose whole body (bar the docstring, inside with-blocks) returns one call."""
    found = []
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef) or function.name in LOOP_SEAMS:
            continue
        body = function.body[1:] if ast.get_docstring(function) else function.body
        while len(body) == 1 and isinstance(body[0], ast.With):
            body = body[0].body
        if len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Call):
            found.append(f"{function.name} (line {function.lineno})")
    return found


def calls_to(tree: ast.Module, start: str, target: str) -> int | None:
    """How many calls down from function `start` the module calls `target` (1: start calls it), or None."""
    calls = {f.name: {n.func.id for n in ast.walk(f) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
             for f in tree.body if isinstance(f, ast.FunctionDef)}
    level, seen = {start}, set()
    for depth in range(1, len(calls) + 1):
        called = set().union(*(calls.get(name, set()) for name in level))
        if target in called:
            return depth
        seen |= level
        level = called - seen
        if not level:
            return None
    return None


def report_fallbacks(package: Path, keys: set[str]) -> list[str]:
    """`.get("<a progress report key>"...)` on a report (p, progress, report, sent, state) in the modules that
    read reports: Report.read is the one place that knows what older rows lack (a queue row's own fields,
    `row.get(...)`, and a package summary's picks are not the report)."""
    pattern = re.compile(r"\b(p|progress|report|sent|state)\.get\(\s*[\"'](" + "|".join(sorted(keys)) + r")[\"']")
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        if path.name == "progress_report.py" or "progress_report import" not in text:
            continue
        found += [f"{path.relative_to(package.parent)}:{number}: {line.strip()}"
                  for number, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    return found


def test_progress_reports_are_read_through_their_one_reader(tmp_path):
    import dataclasses

    from animad.progress_report import Report

    keys = {field.name for field in dataclasses.fields(Report)}
    assert not report_fallbacks(PACKAGE, keys), "\n".join(report_fallbacks(PACKAGE, keys))
    # The rule catches what it forbids, and leaves a queue row's own fields alone.
    package = tmp_path / "animad"
    package.mkdir()
    (package / "view.py").write_text("from animad.progress_report import Report\n"
                                     "end = p.get('end_epoch', p.get('max_epochs'))\npid = row.get('pid')\n"
                                     "epoch = pick.get('epoch')\n")
    (package / "other.py").write_text("epoch = pick.get('epoch')  # no reports read here\n")
    assert report_fallbacks(package, keys) == ["animad/view.py:2: end = p.get('end_epoch', p.get('max_epochs'))"]


def test_only_jobpaths_opens_the_ending_files():
    found = ending_file_mentions(PACKAGE)
    assert not found, "go through JobPaths.write_ending / read_ending / ended_at:\n" + "\n".join(found)


def test_the_loop_reads_top_to_bottom():
    tree = ast.parse(LOOP.read_text())
    assert not thin_wrappers(tree), thin_wrappers(tree)
    # The loss is computed one call below the step's body (micro_batch_loss calls flow_loss).
    assert calls_to(tree, "train_step", LOSS) == 2
    # Classes before their first use: every record is defined above the first function.
    first_function = min(f.lineno for f in tree.body if isinstance(f, ast.FunctionDef))
    assert all(c.lineno < first_function for c in tree.body if isinstance(c, ast.ClassDef))


def test_the_loop_and_ending_checks_catch_what_they_forbid(tmp_path):
    package = tmp_path / "animad"
    (package / "select").mkdir(parents=True)
    (package / "layout.py").write_text("FINISHED = 'finished.txt'\n")  # its home: fine
    (package / "select" / "run.py").write_text('"""Reads finished.txt (a docstring: fine)."""\n'
                                               "text = (root / 'finished.txt').read_text()\n")
    assert ending_file_mentions(package) == ["animad/select/run.py:2: names finished.txt"]
    tree = ast.parse("def velocity(run, x):\n    with run.ctx():\n        return run.model(x)\n\n"
                     "def host_values(t):\n    return t.tolist()\n\n"
                     "def step(run):\n    return loss(run) + 1\n\n"
                     "def loss(run):\n    return deeper(run) * 2\n\n"
                     "def deeper(run):\n    x = 1\n    return flow_loss(run, x)\n")
    assert thin_wrappers(tree) == ["velocity (line 1)"]
    assert calls_to(tree, "step", "flow_loss") == 3 and calls_to(tree, "deeper", "flow_loss") == 1
    assert calls_to(tree, "velocity", "flow_loss") is None


def test_no_test_module_imports_another():
    found = imports_of_test_modules(TESTS)
    assert not found, "move what is shared into a helper module:\n" + "\n".join(found)


def test_the_test_import_rule_catches_what_it_forbids(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "train_helpers.py").write_text("import test_engine\n")
    (tests / "test_a.py").write_text("from train_helpers import prepare\nimport test_layout_rules\n")
    (tests / "test_b.py").write_text("def f():\n    from test_a import x\n\n"
                                     "def g():\n    return importlib.import_module('test_a')\n")
    (tests / "test_c.py").write_text("from animad.train import loop\nfrom curve_families import make_curve\n"
                                     "from . import helpers\n")
    assert imports_of_test_modules(tests) == [
        "tests/test_a.py:2: imports test_layout_rules",
        "tests/test_b.py:2: imports test_a",
        "tests/test_b.py:5: imports test_a",
        "tests/train_helpers.py:1: imports test_engine",
    ]
