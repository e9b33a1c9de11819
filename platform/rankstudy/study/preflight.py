"""The checks a spec passes before anything is computed, in one place: `rankstudy plan` and
`rankstudy study` (and so `jobs/study.py`) both call `preflight`, so that what the plan refuses
the study refuses with the same message, before Ray starts.

Torch-free, like the plan: the model is read as its config (rankstudy.study.model_fit), the data as
rows (rankstudy.tasks.rows).
"""

from __future__ import annotations

import os
from pathlib import Path

from rankstudy.core.errors import InputError
from rankstudy.core.spec import SpecError, StudySpec, check_storage_uri
from rankstudy.model.architecture import Architecture
from rankstudy.model.devices import device_problem
from rankstudy.storage.folders import check_writable, on_disk, probe_storage
from rankstudy.study.model_fit import check_fits_model, hub_answers
from rankstudy.study.plan import split_sizes
from rankstudy.study.ray_cluster import answers
from rankstudy.study.registry import registry_problem


def tracking_uri(spec_uri: str | None, out_dir: Path) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else a sqlite file in the study's directory."""
    return (
        spec_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
    )


def check_data(spec: StudySpec) -> dict[str, int] | None:
    """Examples per split, counted on the rows the task builds its splits from: a missing
    file, a broken line, a missing field or too few rows is named by its task field. A hub
    data set this machine cannot reach (offline) is left to the trials, whose nodes may reach
    it (None), as a hub model is (rankstudy.study.model_fit)."""
    task = spec.task
    hub = task.kind == "gsm8k" and not Path(task.path).expanduser().exists()
    if hub and not hub_answers():
        print(
            f"rankstudy: task.gsm8k.path: {task.path} is on the hub, which is not within reach "
            f"here (offline); the checks of its rows are left to the trials",
            flush=True,
        )
        return None
    try:
        return split_sizes(spec)
    except InputError as e:
        raise SpecError(f"task.{spec.task.kind}.{e}") from None


def storage_base(spec: StudySpec) -> str | None:
    """Where the trials' folders go: the spec's `storage`, else $RANKSTUDY_STORAGE; None: the
    study's own folder."""
    return spec.storage or os.environ.get("RANKSTUDY_STORAGE") or None


def check_storage(spec: StudySpec) -> str | None:
    """The storage_base, checked: a URI of a known scheme that answers (a bounded probe), or
    an absolute path to a folder that is already there (every node must see it, so it is
    never made here)."""
    base = storage_base(spec)
    field = "storage" if spec.storage else "RANKSTUDY_STORAGE"
    try:
        check_storage_uri(base)
        if base and base.startswith("/"):
            check_writable(field, Path(base), must_exist=True)
    except InputError as e:
        message = str(e)
        raise SpecError(message if message.startswith(field) else f"{field}: {message}") from None
    if base and on_disk(base) is None and (failed := probe_storage(base)):
        raise SpecError(
            f"{field}: {base} does not answer ({failed}); check the URI, the credentials and "
            f"the network (on one machine, leave it unset)"
        )
    return base


def check_tracking(spec: StudySpec, out_dir: Path) -> str:
    """The study's MLflow URI, once a server it names answers (a bounded probe)."""
    uri = tracking_uri(spec.tracking.uri, out_dir)
    field = "tracking.uri" if spec.tracking.uri else "MLFLOW_TRACKING_URI"
    if uri.startswith(("http://", "https://")) and not answers(uri):
        raise SpecError(f"{field}: nothing answers at {uri} (the MLflow server)")
    if spec.tracking.register_as and (problem := registry_problem(uri)):
        raise SpecError(f"tracking.register_as: {problem}")
    return uri


def preflight(spec: StudySpec, out_dir: Path) -> tuple[Architecture | None, dict[str, int] | None]:
    """Every check of a spec that needs neither Ray nor a write: this machine's GPUs can do
    what it asks (devices), the model takes the spec (model_fit), the data files hold the
    splits, the storage is there, the MLflow server answers. Returns what the checks read, for
    the plan: the model's architecture and the examples per split (each None when out of reach
    here); raises SpecError."""
    if problem := device_problem(spec):
        raise SpecError(problem)
    arch = check_fits_model(spec)
    sizes = check_data(spec)
    check_storage(spec)
    check_tracking(spec, out_dir)
    return arch, sizes
