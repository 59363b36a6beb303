"""`<job>/accept.json`: the job's identity and how far its acceptance got, written durably at each step.

Accepting a folder is one transaction across two places (the inbox and the job folder), and on
another file system it takes a while (copy, verify, remove). The record says which step a kill
interrupted, so that the restart finishes or rolls back exactly that step (daemon/freeze.py,
`finish_accepting`):

- `copying`: the inbox folder is the truth; anything in the job folder is ours and unverified
  (rolled back: the folder is taken again as it is). Within one file system the rename is atomic: a
  dataset found in the job folder was moved whole.
- `verified`: a copy checked byte for byte against the manifest is in the job folder (or in its
  partial folder, about to be renamed); the inbox folder is untouched.
- `removing-inbox`: the inbox folder is being removed; what is left of it is removed too, if it is
  still what remains of that very folder (same folder, every file one of the manifest's, unchanged).
- `frozen`: the dataset is in the job folder only; the job files come next.
- `done`: accepted.

It also keeps what the queue row says of the job (name, source, created, outbox folder), so the
job's name never comes from a folder's name inside the job, and a queue rebuilt from the job folders
gets the same names, creation times and review package folders.
"""

from __future__ import annotations

import json
from pathlib import Path

from animad.fsutil import write_atomic

ACCEPT = "accept.json"

COPYING, VERIFIED, REMOVING_INBOX, FROZEN, DONE = "copying", "verified", "removing-inbox", "frozen", "done"
PHASES = (COPYING, VERIFIED, REMOVING_INBOX, FROZEN, DONE)


class AcceptRecord:
    def __init__(self, job_dir: Path, fields: dict):
        self.job_dir = Path(job_dir)
        self.fields = dict(fields)

    @classmethod
    def start(cls, job_dir: Path, row: dict, **extra) -> "AcceptRecord":
        """The record of a new accept, from its queue row; written (phase `copying`) before anything moves."""
        record = cls(job_dir, {"job": row["id"], "name": row["name"], "source": row["source"],
                               "created": row["created"], "outbox_dir": row["outbox_dir"], **extra})
        record.advance(COPYING)
        return record

    @classmethod
    def read(cls, job_dir: Path) -> "AcceptRecord | None":
        """The record in job_dir, or None (a folder accepted before records were kept, or torn by hand)."""
        try:
            fields = json.loads((Path(job_dir) / ACCEPT).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(fields, dict) or fields.get("phase") not in PHASES:
            return None
        return cls(job_dir, fields)

    @property
    def phase(self) -> str:
        return self.fields["phase"]

    def get(self, key: str, default=None):
        return self.fields.get(key, default)

    def advance(self, phase: str) -> None:
        """Record phase durably (fsynced, atomic): a kill after this call finds it."""
        self.fields["phase"] = phase
        write_atomic(self.job_dir / ACCEPT, json.dumps(self.fields, indent=1).encode(), make_parents=False)
