"""Every RQ job name the code enqueues (a ``*_JOB`` constant in ``tenants/`` or ``worker/``) resolves to a function a
worker can import: a renamed job fails here, not in a queue at run time."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import tenants
import worker

JOB_NAME = re.compile(r"^worker\.[a-z_.]+$")


def _modules(package: object) -> Iterator[object]:
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):  # type: ignore[attr-defined]
        yield importlib.import_module(info.name)


def job_names() -> dict[str, str]:
    """``module.CONSTANT`` → job name, for every ``*_JOB`` string constant."""
    found = {}
    for package in (tenants, worker):
        for module in _modules(package):
            for name, value in vars(module).items():
                if name.endswith("_JOB") and isinstance(value, str):
                    found[f"{module.__name__}.{name}"] = value
    return found


def test_every_job_name_resolves_to_a_worker_function():
    names = job_names()
    assert len(names) >= 10, names  # the scan found the registry (deliver, purge, digests, replay...)
    for where, job in names.items():
        assert JOB_NAME.match(job), f"{where}: {job!r} is not a worker function path"
        module, _, func = job.rpartition(".")
        assert callable(getattr(importlib.import_module(module), func, None)), f"{where}: {job} does not resolve"


def test_no_job_is_enqueued_by_a_name_written_out_in_place():
    """Job names live in one named constant each (so the test above sees them all)."""
    root = tenants.__path__[0].rsplit("/", 1)[0]  # type: ignore[attr-defined]
    literal = re.compile(r"enqueue_job\(\s*\w+,\s*[\"']")
    offenders = []
    for folder in ("tenants", "worker", "app", "mailward", "smtp"):
        for path in sorted(Path(root, folder).rglob("*.py")):
            if literal.search(path.read_text()):
                offenders.append(str(path))
    assert offenders == []
