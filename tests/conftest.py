"""Shared fixtures: a tiny Anima-shaped model set in the real key layout, written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never reach a model hub, and must not depend on the user's config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("ANIMAD_CONFIG", None)
# The tiny models gain nothing from several CPU threads, and on a busy machine OpenMP threads that
# spin against other processes (the job children, a second rank) made runs up to 15x slower.
# Set before torch is imported; children (animad train, daemon jobs) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_tokenizers() -> Path | None:
    """The real Qwen3/T5 tokenizer files (../shared/tokenizers), when this checkout has them."""
    from animad.anima.tiny import find_shared_tokenizers

    return find_shared_tokenizers()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, shared_tokenizers) -> dict:
    from animad.anima.tiny import make_tiny_model_set

    return make_tiny_model_set(tmp_path_factory.mktemp("tiny-models"), seed=0, tokenizers=shared_tokenizers)


@pytest.fixture()
def daemon_config(tmp_path, tiny_models) -> Path:
    """An animad.yaml in tmp_path whose default model set is the tiny set (cache shared per test dir)."""
    from animad.demo.synthetic import write_daemon_config

    # The dashboard off (port 0): many daemons start in one test run; the dashboard's tests turn it on.
    return write_daemon_config(tmp_path / "animad.yaml", tiny_models, dashboard={"port": 0})


@pytest.fixture()
def setup(daemon_config):
    """(daemon config, its queue, its inbox folder) for tests that drive intake in process."""
    from animad.config.daemon import load_daemon_config
    from animad.daemon.queue import Queue, queue_path

    daemon = load_daemon_config(daemon_config)
    inbox = daemon.dir("inbox")
    inbox.mkdir(parents=True, exist_ok=True)
    return daemon, Queue(queue_path(daemon)), inbox


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models):
    """One 6-epoch run shared by a module's checks (save precision fp32 for exact comparisons):
    (job paths, daemon config, status, progress reports, the tiny model set)."""
    from animad.demo.synthetic import tiny_job, write_daemon_config

    from train_helpers import prepare, train

    tmp = tmp_path_factory.mktemp("trained")
    config = write_daemon_config(tmp / "animad.yaml", tiny_models)
    job = tiny_job(epochs=6, precision={"save": "fp32"}, selection={"stop_at_floor": False})
    paths, daemon = prepare(tmp, config, job)
    status, progress = train(paths, daemon)
    return paths, daemon, status, progress, tiny_models
