"""Read sd-scripts files into flags: launch files (.bat, .sh, .ps1), --config_file TOMLs, dataset TOMLs
and GUI presets (SD-Trainer TOMLs, kohya_ss .json).

What comes out is what sd-scripts' argparse and config_util would have seen: one value per option
name, each with where it came from (so job.yaml can say which flag a line came from), and the
dataset's subsets with their settings merged subset > dataset > [general], as config_util merges
them. Nothing is translated here (importer/translate.py does that), and nothing is dropped or
refused: what cannot be read is recorded (a problem, a flag whose value is not known, a flag
sd-scripts itself would ignore), to be listed in IMPORT.txt.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from animad.errors import UserError
from animad.importer.gui import is_gui_preset, read_gui_preset
from animad.importer.launch import read_launch_file
from animad.importer.prompts import read_prompts
from animad.importer.sources import (DatasetSubset, Flag, Listed, Locate, Sources, _as_written, _toml_value, load_toml,
                                     read_config_toml, read_text)

LAUNCH_SUFFIXES = (".bat", ".cmd", ".sh", ".ps1")
# A dataset TOML names these keys differently from the command line (config_util's names).
DATASET_KEY_FLAGS = {"batch_size": "train_batch_size"}
__all__ = ["Flag", "Listed", "Sources", "read_sources"]


def read_sources(files: list[Path], locate: Locate = _as_written) -> Sources:
    """Read any mix of one launch file, --config_file TOMLs, GUI presets and one dataset TOML (any order).

    locate(text, base) says where a path named inside a file is on this machine (the importer
    translates Windows paths under WSL); base is the folder of the file that names it."""
    sources = Sources()
    launches = [f for f in files if f.suffix.lower() in LAUNCH_SUFFIXES]
    if len(launches) > 1:
        raise UserError(f"{len(launches)} launch files given ({', '.join(map(str, launches))}): one launch file is "
                        "one job. Import each into its own folder (--to inbox/NAME), and chain them with "
                        "network.init_from (IMPORT.txt says how)")
    for path in (f for f in files if f not in launches):
        _guarded(path, sources, lambda path=path: _read_other(path, sources))
    if launches:
        _guarded(launches[0], sources, lambda: read_launch_file(launches[0], sources, locate))
    # Paths inside the files are taken from the launch file's folder (sd-scripts' usual working folder),
    # else from the folder of the first file given.
    base = launches[0].parent if launches else (files[0].parent if files else Path.cwd())
    _dataset_config(sources, base, locate)
    train_data_dir = sources.flags.get("train_data_dir")
    if train_data_dir and "dataset_config" not in sources.flags and sources.dataset_file is None:
        read_train_data_dir(train_data_dir, locate(str(train_data_dir.value), base), sources)
    elif train_data_dir:
        sources.read_as["train_data_dir"] = ("not read: sd-scripts uses the dataset config instead of "
                                             "--train_data_dir when both are given")
    prompts = sources.flags.get("sample_prompts")
    if prompts and not sources.prompts:  # a GUI preset may hold the prompts themselves
        read_prompts(prompts, locate(str(prompts.value), base), sources)
    return sources


def _guarded(path: Path, sources: Sources, read) -> None:
    """Read one file; a failure of the importer itself on it becomes a problem, never a traceback
    (the other files are still read and job.yaml is still written)."""
    try:
        read()
    except (UserError, RecursionError, MemoryError) as error:
        sources.problems.append(f"{path.name}: could not be read ({error}); nothing from it was imported")
    except Exception as error:  # noqa: BLE001 - a bug of ours must not cost the user the rest of the import
        sources.problems.append(f"{path.name}: animad import failed on it ({type(error).__name__}: {error}); "
                                "nothing from it was imported. This is a bug in animad import: please report it "
                                "with the file")


def _read_other(path: Path, sources: Sources) -> None:
    suffix = path.suffix.lower()
    if suffix == ".json":
        read_gui_preset(_load_json(path, sources), path, sources)
        return
    if suffix != ".toml":
        sources.problems.append(f"{path.name}: not a .toml, .json, .bat, .cmd, .sh or .ps1 file, so it was not "
                                "read; give sd-scripts' dataset TOML, its --config_file TOML, a GUI preset or its "
                                "launch file")
        return
    data = load_toml(read_text(path), path.name, sources)
    if "datasets" in data or "general" in data:
        if sources.dataset_file is not None:
            sources.problems.append(f"{path.name}: a second dataset TOML (the first, {sources.dataset_file.name}, "
                                    "was used); one job trains one dataset config: import the other on its own")
            return
        read_dataset_toml(data, path, sources)
    elif is_gui_preset(data):
        read_gui_preset(data, path, sources)
    else:
        read_config_toml(data, path, sources)


def _dataset_config(sources: Sources, base: Path, locate: Locate) -> None:
    """--dataset_config: the TOML the launch file writes (a heredoc), the file it names, or the one given."""
    flag = sources.flags.get("dataset_config")
    if flag is None:
        return
    if sources.dataset_file is not None:
        sources.read_as["dataset_config"] = (f"not read: {sources.dataset_file.name}, given to animad import, was "
                                             "read in its place")
        return
    named = locate(str(flag.value), base)
    written = sources.written.get(os.path.normpath(str(named)))
    if written is not None:
        data = load_toml(written, named.name, sources)
        read_dataset_toml(data, named, sources)
        sources.read_as["dataset_config"] = f"read: the TOML the launch file writes into {named.name} (a heredoc)"
    elif named.is_file():
        read_dataset_toml(load_toml(read_text(named), named.name, sources), named, sources)
        sources.read_as["dataset_config"] = f"read: {named}"
    else:
        sources.read_as["dataset_config"] = f"not read: {named} is not on this machine"
        sources.problems.append(
            f"the dataset config named by {flag.origin} was not found; give the dataset TOML to animad import as "
            "well (animad import LAUNCH_FILE DATASET.toml ...)")


KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


def read_train_data_dir(flag: Flag, folder: Path, sources: Sources) -> None:
    """--train_data_dir without a dataset config: sd-scripts' DreamBooth layout, where each 'N_name'
    subfolder is a subset with N repeats whose images without a caption file train on 'name'."""
    if not folder.is_dir():
        sources.read_as["train_data_dir"] = f"not read: {folder} is not on this machine"
        sources.problems.append(f"the folder named by {flag.origin} was not found ({folder}); copy its 'N_name' "
                                "subfolders into the job folder by hand")
        return
    sources.read_as["train_data_dir"] = f"read: its 'N_name' folders in {folder} are data.subsets"
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        match = KOHYA_FOLDER.match(sub.name)
        if not match:
            sources.notes.append(f"{flag.origin}: {sub.name} has no 'N_' repeats prefix; sd-scripts skips it, "
                                 "and so did the import")
            continue
        where = f"{flag.origin}, folder {sub.name}"
        sources.subsets.append(DatasetSubset({
            "image_dir": Flag("image_dir", str(sub), where),
            "num_repeats": Flag("num_repeats", int(match.group(1)), f"{where} (its 'N_' prefix)"),
            "class_tokens": Flag("class_tokens", match.group(2), f"{where} (its name after the prefix)"),
        }, 0))


def _load_json(path: Path, sources: Sources) -> dict:
    try:
        data = json.loads(read_text(path))
    except ValueError as error:
        sources.problems.append(f"{path.name}: not valid JSON ({error}); it was not read")
        return {}
    if not isinstance(data, dict):
        sources.problems.append(f"{path.name}: not a JSON object of settings; it was not read")
        return {}
    return data


def read_dataset_toml(data: dict, path: Path, sources: Sources) -> None:
    """[general], [[datasets]] and [[datasets.subsets]]: each subset with what it inherits."""
    sources.dataset_file = path
    general = data.get("general") or {}
    datasets = data.get("datasets") or []
    if not isinstance(general, dict) or not isinstance(datasets, list):
        sources.problems.append(f"{path.name}: [general] must be a table and [[datasets]] a list of tables; the "
                                "dataset config was not read")
        return
    for key in data:
        if key not in ("general", "datasets"):
            sources.listed.append(Listed(key, f"{path.name} {key}", "not an sd-scripts option",
                                         "config_util reads only [general] and [[datasets]]; it was ignored"))
    for index, dataset in enumerate(datasets):
        if not isinstance(dataset, dict):
            continue
        subsets = dataset.get("subsets") or []
        if not subsets:
            sources.problems.append(f"{path.name}: [[datasets]] #{index + 1} has no [[datasets.subsets]]; it was "
                                    "skipped (sd-scripts would train nothing from it)")
        for sub_index, subset in enumerate(subsets):
            values: dict[str, Flag] = {}
            for where, table in (("[general]", general), (f"[[datasets]] #{index + 1}", dataset),
                                 (f"[[datasets.subsets]] #{sub_index + 1}", subset)):
                for key, value in table.items():
                    if key == "subsets":
                        continue
                    name = DATASET_KEY_FLAGS.get(key, key)
                    values[name] = Flag(name, value, f"{path.name} {where} {key} = {_toml_value(value)}")
            sources.subsets.append(DatasetSubset(values, index))


