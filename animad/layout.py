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
      ending.json            how training ended (an Ending record: train/ending.py decides, select/ and daemon/ read)
      finished.txt           the same, as one sentence for people (older runs have this file alone)
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from pathlib import Path

from animad.errors import UserError
from animad.fsutil import write_atomic

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

    # How training ended: only the methods below open these (tests/test_layout.py checks it).
    _ending = property(lambda self: self.root / "ending.json")
    _finished = property(lambda self: self.root / "finished.txt")

    def write_ending(self, ending: Ending) -> None:
        """The record, then the sentence: finished.txt is the marker that training is over, so it comes last."""
        write_atomic(self._ending, (json.dumps(dataclasses.asdict(ending), indent=1) + "\n").encode())
        self._finished.write_text(ending.sentence + "\n")

    def read_ending(self) -> Ending | None:
        """How training ended, or None while it has not. The one reader: a run from before ending.json
        (its finished.txt a sentence alone) is read from the sentence's known wordings."""
        try:
            sentence = self._finished.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"{self._finished}: cannot read it ({error})") from None
        try:
            fields = json.loads(self._ending.read_text(encoding="utf-8"))
            return Ending(**{f.name: fields[f.name] for f in dataclasses.fields(Ending)})
        except (OSError, ValueError, TypeError, KeyError):
            return Ending.from_sentence(sentence)

    def clear_ending(self) -> None:
        """A finished run trains on (its limit was raised): its ending is no longer true."""
        self._finished.unlink(missing_ok=True)
        self._ending.unlink(missing_ok=True)

    def ended_at(self) -> float | None:
        """When training ended (the sentence's modification time), or None while it has not."""
        try:
            return self._finished.stat().st_mtime
        except OSError:
            return None

    def epoch_file(self, name: str, epoch: int) -> Path:
        return self.epochs_dir / f"{name}-e{epoch:04d}.safetensors"

    def read_meta(self) -> dict:
        try:
            return json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return {}


@dataclasses.dataclass(frozen=True)
class Ending:
    """How a run's training ended: train/ending.py decides it, select/, daemon/ and the page read it.

    Nothing reads the sentence for facts: it is for people (finished.txt, the review page).
    """

    kind: str  # "floor": stopped at the confirmed floor; "max_epochs" / "max_steps": that limit; "unknown"
    epochs: int | None  # epochs trained (None: an old run's sentence does not say)
    floor_epoch: int | None  # the floor was confirmed after this epoch (None: no floor ended the run)
    cooldown_epochs: int  # the last epochs cooled the learning rate to 0 (0: no cooldown)
    sentence: str

    @classmethod
    def from_sentence(cls, sentence: str) -> Ending:
        """An old run's finished.txt: the wordings train/ending.py wrote before ending.json existed."""
        floor = re.search(r"confirmed loss floor after epoch (\d+)", sentence)
        cooled = re.search(r"cooled the learning rate to 0 over (\d+) epochs", sentence)
        limit = re.search(r"reached (max_epochs|max_steps)", sentence)
        kind = "floor" if floor else limit.group(1) if limit else "unknown"
        return cls(kind=kind, epochs=None, floor_epoch=int(floor.group(1)) if floor else None,
                   cooldown_epochs=int(cooled.group(1)) if cooled else 0, sentence=sentence)


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


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One line of epochs.jsonl: one finished epoch. train/loop.py builds it (train/tracking.py appends it);
    read_epochs_log is its one reader. A field an older file lacks gets its default there, so no reader
    after it needs a fallback."""

    epoch: int
    step: int | None = None  # optimizer steps after this epoch
    loss: float | None = None  # the epoch's mean training loss
    eval_loss: float | None = None  # the stable eval (train/evaluation.py)
    eval_by_sigma: dict[str, float] = dataclasses.field(default_factory=dict)
    lr: float | None = None  # the LR after the epoch's last step
    d_lr: float | None = None  # d*lr (Prodigy), else lr
    prodigy_d: float | None = None
    cooldown: bool = False  # trained in the cooldown (older runs had none)
    seconds: float | None = None  # the epoch's steps over every launch, and its eval
    eval_seconds: float | None = None
    file: str | None = None  # its network file, relative to the job folder
    time: str | None = None  # when it was written

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_epoch_record(text: str) -> dict | None:
    """Given one line of epochs.jsonl, return its record (every EpochRecord field, defaults for those an
    older line lacks), or None if it is not one.

    The rows stay dicts keyed by EpochRecord's fields: the floor analysis and the curve readers index
    them by key (every key is there, so none needs a fallback)."""
    try:
        fields = json.loads(text)
        fields["epoch"] = int(fields["epoch"])
        for key in ("loss", "eval_loss"):
            if fields.get(key) is not None:
                float(fields[key])
        known = {field.name for field in dataclasses.fields(EpochRecord)}
        return EpochRecord(**{key: value for key, value in fields.items() if key in known}).to_dict()
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


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
