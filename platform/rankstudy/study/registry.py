"""An exported adapter registered as an MLflow model version (`rankstudy export --register`,
or `tracking.register_as` at the end of a study): what a team deploys, loaded back by
`models:/NAME/VERSION` and carrying the study's figures for it as the version's tags.

The model is logged into the study's own store, under a run of the study (a child of its
parent run), as rankstudy.study.adapter_model: the exported PEFT folder and the study's model spec,
from which it rebuilds the base. Every request is checked before any model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import requires
from pathlib import Path

from rankstudy.core import mlflow_names as names
from rankstudy.core.errors import InputError
from rankstudy.core.spec import ModelSpec
from rankstudy.core.summaries import SUMMARY_FILE, StudySummary, read_study_summary


class RegistryError(InputError):
    """A registration the study cannot serve; the message names the option and why."""


MODEL_CODE = Path(__file__).with_name("adapter_model.py")
MAX_NEW_TOKENS = 16  # predict's default; load_model(..., model_config=...) sets another


def registry_problem(uri: str) -> str | None:
    """Why MLflow at `uri` cannot hold a model registry (a file store), None when it can."""
    if uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks")):
        return (
            f"the MLflow store {uri} is a file store; the model registry needs a "
            f"database-backed one (sqlite:///..., postgresql://..., or a tracking server)"
        )
    return None


@dataclass(frozen=True)
class Registration:
    """What a version records: the study's summary (its MLflow store and figures), the
    version's tags (figures) and the base model's spec."""

    summary: StudySummary
    tags: dict[str, str]
    model: ModelSpec


def plan_registration(
    study_dir: str | Path, method: str, rank: int, seed: int | None
) -> Registration:
    """`rankstudy export --register`'s request, checked: the study finished (its summary),
    its store can hold a registry, it scored `method` at `rank`."""
    from rankstudy.study.export import read_study, study_spec  # torch: preflight checks without it

    study_dir = Path(study_dir).resolve()
    path = study_dir / SUMMARY_FILE
    if not path.is_file():
        raise RegistryError(f"--register: {study_dir} holds no finished study (no {path.name})")
    summary = read_study_summary(path)
    if problem := registry_problem(summary.mlflow.tracking_uri):
        raise RegistryError(f"--register: {problem}")
    model = study_spec(read_study(study_dir)).model
    return Registration(summary, figures(summary, method, rank, seed), model)


def figures(summary: StudySummary, method: str, rank: int, seed: int | None) -> dict[str, str]:
    """The study's figures for `method` at `rank` from seed `seed`'s trial (None: the first
    seed's, as export's), as version tags: its AURAC, its test score there (that trial's, and
    the mean over seeds) and what the study spent on the method. Only a method the study
    scored at that rank has them."""
    seed = summary.seeds[0] if seed is None else seed
    if seed not in summary.seeds:
        raise RegistryError(f"--seed: the study ran seeds {summary.seeds}, not {seed}")
    m = summary.methods.get(method)
    if m is None:
        scored = ", ".join(summary.methods) or "none"
        raise RegistryError(
            f"--register: the study scored no method {method!r} (it scored {scored}); a LoRA "
            f"arm lora_r<k> registers as --method lora_grid --rank <k>"
        )
    if rank not in m.ranks:
        raise RegistryError(
            f"--register: the study scored {method} at ranks {m.ranks}, not {rank}: a "
            f"version carries its score"
        )
    at = m.ranks.index(rank)
    cost = {
        f"{names.COST_PREFIX}{k}": getattr(m.cost, k) for k in ("flops", "device_seconds", "money")
    }
    out = {
        "study": summary.study,
        "study_run": summary.mlflow.parent_run_id,
        "method": method,
        "rank": rank,
        "seed": seed,
        "inference_rule": m.inference_rule,
        "metric": m.metric,
        f"{names.AURAC_PREFIX}log2": m.aurac_log2,
        f"{names.AURAC_PREFIX}linear": m.aurac_linear,
        names.TEST_SCORE: m.scores_by_seed[str(seed)][at],
        f"{names.TEST_SCORE}_mean": m.scores[at],
        **cost,
    }
    return {k: str(v) for k, v in out.items() if v is not None}


def base_reference(model: ModelSpec) -> str:
    """The base model as the spec names it: hub id or local path, GGUF file, or tiny config."""
    if model.tiny is not None:
        return f"tiny {model.tiny.model_dump_json()}"
    return model.name or model.gguf


def register(request: Registration, adapter: Path, name: str) -> str:
    """Log the exported adapter folder as an MLflow model under a run of the study, register
    it as a version of `name` carrying the figures and the base model, and return its URI."""
    import mlflow
    from mlflow.tracking import MlflowClient

    summary, model = request.summary, request.model
    uri = summary.mlflow.tracking_uri
    client = MlflowClient(uri)
    parent = summary.mlflow.parent_run_id
    run = client.create_run(
        summary.mlflow.experiment_id,
        run_name=f"{request.tags['method']} at rank {request.tags['rank']} · registered as {name}",
        tags={names.PARENT_TAG: parent, names.KIND_TAG: names.MODEL},
    )
    tags = request.tags | {"base_model": base_reference(model)}
    with tracking_uri(uri):
        with mlflow.start_run(run.info.run_id):
            mlflow.log_params(tags)
            info = mlflow.pyfunc.log_model(
                name="adapter",
                python_model=str(MODEL_CODE),
                artifacts={"adapter": str(adapter)},
                model_config={
                    "base_model": model.model_dump(mode="json"),
                    "max_new_tokens": MAX_NEW_TOKENS,
                },
                code_paths=[str(MODEL_CODE.parent)],  # loads where rankstudy is not installed
                pip_requirements=environment(),
            )
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    return f"models:/{name}/{version.version}"


@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` for a while (log_model and register_model
    know no other). set_tracking_uri also exports MLFLOW_TRACKING_URI to os.environ, for
    subprocesses: it is put back as it was, unset if it was, so nothing started later records
    into this store."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def environment() -> list[str]:
    """rankstudy's own pinned requirements: the model builds its base with rankstudy (given
    explicitly, as MLflow's inference would load the model to find them)."""
    return [r for r in requires("rankstudy") or [] if "extra ==" not in r]
