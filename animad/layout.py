"""Where a job's files live. Every part (daemon, train, select) goes through these names.

A job folder looks like this:

    <job>/
      dataset/               the frozen dataset (daemon jobs; `animad train DIR` points at DIR instead)
      job.resolved.yaml      the config with every default filled in
      job.json               identity: name, dataset path, model files, created time
      accept.json            daemon jobs: the queue row's name, source, created, outbox folder, and how far
                             accepting got (daemon/accept_record.py; a rebuilt queue reads it)
      report.json            validation problems (warnings travel to the review package)
      epochs/NAME-e0001.safetensors   every epoch, with its true number
      epochs.jsonl           one JSON object per finished epoch (what select/ reads)
      tb/                    TensorBoard events
      state/resume.pt        the resume state (written atomically; only the last is kept)
      state/resume.json      its epoch and step, written after it (status's resume point, without torch)
      train.log              the job's log
      child-stderr.log       daemon jobs: what the job processes wrote to stderr (status quotes its tail
                             for a job process that died before it could report)
      selection/             previews rendered for the review package
      init_from.safetensors  network.init_from: job:<name>: that job's LoRA, copied here before training
      init_from.json         which job and epoch it came from, and its sha256
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from animad.errors import UserError

NAME_CHARS = 80  # long job names are cut; the epoch and kind always follow in the file name
NAME_BYTES = 160  # file systems allow 255 bytes; leave room for "-e0023-lowest.safetensors" etc.


class JobPaths:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def dataset(self) -> Path:
        meta = self.read_meta()
        if meta.get("dataset"):
            return Path(meta["dataset"])
        return self.root / "dataset"

    resolved = property(lambda self: self.root / "job.resolved.yaml")
    meta = property(lambda self: self.root / "job.json")
    report = property(lambda self: self.root / "report.json")
    epochs_dir = property(lambda self: self.root / "epochs")
    epochs_log = property(lambda self: self.root / "epochs.jsonl")
    tensorboard = property(lambda self: self.root / "tb")
    state_dir = property(lambda self: self.root / "state")
    resume_state = property(lambda self: self.root / "state" / "resume.pt")
    log = property(lambda self: self.root / "train.log")
    selection = property(lambda self: self.root / "selection")
    # A chained job's starting LoRA is its own copy: a resume, retention in the other job or a
    # rebuilt database never takes it away (daemon/chain.py writes both, train/loop.py reads it).
    init_lora = property(lambda self: self.root / "init_from.safetensors")
    init_record = property(lambda self: self.root / "init_from.json")

    def epoch_file(self, name: str, epoch: int) -> Path:
        return self.epochs_dir / f"{name}-e{epoch:04d}.safetensors"

    def read_meta(self) -> dict:
        try:
            return json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return {}


def read_epochs_log(path: Path) -> list[dict]:
    """Given an epochs.jsonl, return its epoch records in file order ([] while there is no file yet).

    The only reader of epochs.jsonl. A bad last line is a record torn by a kill or a full disk
    mid-write: it is skipped (and cut off when training resumes). A bad line anywhere else is
    damage nobody should train or select on unseen: UserError naming the file and the line.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read it ({error})") from None
    records = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        record = parse_epoch_record(text)
        if record is not None:
            records.append(record)
        elif number < len(lines):
            raise UserError(f"{path}: line {number} is not an epoch record (a JSON object with a whole-number "
                            "'epoch' and numeric 'loss' and 'eval_loss')")
    return records


def parse_epoch_record(text: str) -> dict | None:
    """Given one line of epochs.jsonl, return its record, or None if it is not one."""
    try:
        record = json.loads(text)
        record["epoch"] = int(record["epoch"])
        for key in ("loss", "eval_loss"):
            if record.get(key) is not None:
                float(record[key])
    except (ValueError, TypeError, KeyError):
        return None
    return record


def safe_name(name, fallback: str = "lora") -> str:
    """Given a user-supplied name, return one usable as a single file name inside a folder.

    Path separators, reserved characters and whitespace become '_'; control and format characters
    (including bidi overrides) go; '..' cannot survive and no leading dot makes a hidden file.
    Unicode letters stay. An empty result becomes `fallback`.
    """
    text = unicodedata.normalize("NFC", str(name))
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category.startswith("C"):
            continue  # controls, zero-width and bidi format characters, surrogates, unassigned
        kept.append("_" if char in '/\\:*?"<>|' or category.startswith("Z") or char.isspace() else char)
    cleaned = re.sub(r"_{2,}", "_", "".join(kept))
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip("._- ")
    cleaned = cleaned[:NAME_CHARS]
    while len(cleaned.encode("utf-8")) > NAME_BYTES:
        cleaned = cleaned[:-1]
    return cleaned.rstrip("._- ") or fallback
