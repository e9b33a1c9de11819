"""`rankstudy evaluate`: a study's chosen trial at some ranks, or an exported PEFT adapter,
scored by lm-evaluation-harness itself, so the number is the one the field reports.

GSM8K runs offline on local files: lm-eval's own gsm8k.yaml, read from the installed package
at run time (so it never drifts from lm-eval's task), with only its dataset lines changed to
the local train.jsonl and test.jsonl. Other tasks come from task YAMLs of the user's
(--include); lm-eval's built-in ones would need the hub. Every request is checked before a
model is loaded; a study's numbers go to its method's MLflow run with step = rank.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from rankstudy.core import mlflow_names as names
from rankstudy.core.errors import InputError
from rankstudy.core.spec import ModelSpec, StudySpec
from rankstudy.study.export import ExportError, plan_exports, read_study, run_export, study_spec
from rankstudy.study.state import StudyState

GSM8K_SPLITS = ("train", "test")
TASKS_DIR = "lm_eval_tasks"  # under --out: the task YAMLs lm-eval ran
RESULTS_FILE = "results.json"
SUMMARY_FILE = "evaluate_summary.txt"


class EvaluateError(InputError):
    """A request that cannot be scored; the message names the option and why."""


@dataclass(frozen=True)
class Request:
    """What lm-eval runs: the task, its shots (None: the task's own), how many problems
    (None: all), generation settings over the task's ("max_gen_toks=256") and batch size."""

    task: str
    shots: int | None = None
    limit: int | None = None
    gen_kwargs: str | None = None
    batch_size: str = "1"


def gsm8k_yaml(data: Path, folder: Path) -> Path:
    """lm-eval's gsm8k.yaml with its dataset read from `data`/{train,test}.jsonl, in `folder`."""
    import lm_eval
    import yaml

    files = {s: (data / f"{s}.jsonl").resolve() for s in GSM8K_SPLITS}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise EvaluateError(f"--data: {data} has no {' and no '.join(missing)} (GSM8K's files)")
    theirs = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    config = yaml.safe_load(theirs.read_text(encoding="utf-8"))
    config |= {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items()}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gsm8k.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def task_manager(task: str, data: Path, include: list[Path], out: Path):
    """lm-eval's TaskManager over the local gsm8k task and the --include folders only (indexing
    lm-eval's thousands of built-in tasks takes tens of seconds, and they read the hub)."""
    from lm_eval.tasks import TaskManager

    for folder in include:
        if not folder.is_dir():
            raise EvaluateError(f"--include: {folder} is not a folder of lm-eval task YAMLs")
    paths = [gsm8k_yaml(data, out / TASKS_DIR).parent] if task == "gsm8k" else []
    manager = TaskManager(
        include_path=[str(p) for p in [*paths, *include]] or None, include_defaults=False
    )
    if task not in manager.all_tasks:
        raise EvaluateError(
            f"--task: no task {task!r} here: gsm8k (lm-eval's, on the --data files) or one "
            f"defined in an --include folder"
        )
    return manager


def check_base(base: str) -> str:
    """A local model folder or a well-formed hub id, as a study's `model.name` must be."""
    try:
        return ModelSpec._folder_or_hub_id(base)
    except ValueError as e:
        raise EvaluateError(f"--base: {e}") from None


def adapter_base(adapter: Path, base: str | None) -> str:
    """The base model lm-eval loads under `adapter`: --base, else the adapter's own
    base_model_name_or_path (a tiny model's export names none)."""
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise EvaluateError(f"--adapter: {adapter} holds no PEFT adapter (no {config.name})")
    base = base or json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise EvaluateError(
            f"--base: {config} names no base model (a tiny model's export); give its folder"
        )
    return check_base(base)


def study_base(spec: StudySpec, out: Path) -> str:
    """What lm-eval loads as the study's base: the model's folder or hub id (a GGUF file's
    dequantised folder), or a tiny model, which has no folder, saved with its byte tokenizer
    to <out>/base."""
    from rankstudy.model.build import load_model, model_folder

    if spec.model.tiny is None:
        return model_folder(spec.model)[0]
    import torch

    loaded = load_model(spec.model, torch.float32)
    folder = out / "base"
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return str(folder)


def method_run(state: StudyState, method: str) -> str | None:
    """The id of the method's summary run in the study's MLflow records; None for a LoRA arm
    (lora_r<k>, no method of its own) or a study that recorded none."""
    if state.tracking_uri is None or state.parent_run_id is None:
        return None
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(state.tracking_uri).search_runs(
        [state.experiment_id],
        filter_string=f"tags.`{names.TRIAL_KEY_TAG}` = '{names.method_run_key(method)}' "
        f"and tags.`{names.PARENT_TAG}` = '{state.parent_run_id}'",
    )
    return runs[0].info.run_id if runs else None


def run_lm_eval(base: str, adapter: Path, request: Request, manager) -> dict:
    """lm-eval's simple_evaluate of the HF model `base` with the PEFT adapter on top, on the
    GPU when there is one (lm-eval's own default, "cuda", fails on a CPU-only torch)."""
    import lm_eval
    import torch

    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": base, "peft": str(adapter)},
        tasks=[request.task],
        num_fewshot=request.shots,
        limit=request.limit,
        gen_kwargs=request.gen_kwargs,
        batch_size=request.batch_size,
        task_manager=manager,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )


def write_results(results: dict, folder: Path) -> Path:
    """results.json as lm-eval's own CLI writes it (its serialisation, the samples apart),
    and each task's samples as samples_<task>.jsonl."""
    from lm_eval.utils import handle_non_serializable

    def dumps(obj, **kw) -> str:
        return json.dumps(obj, default=handle_non_serializable, ensure_ascii=False, **kw)

    folder.mkdir(parents=True, exist_ok=True)
    for task, rows in results.get("samples", {}).items():
        lines = "".join(dumps(row) + "\n" for row in rows)
        (folder / f"samples_{task}.jsonl").write_text(lines, encoding="utf-8")
    aggregated = {k: v for k, v in results.items() if k != "samples"}
    path = folder / RESULTS_FILE
    path.write_text(dumps(aggregated, indent=2), encoding="utf-8")
    return path


def scores(results: dict, task: str) -> dict[str, float]:
    """The task's numbers by lm-eval's "<metric>,<filter>" key (stderrs included)."""
    row = results["results"][task]
    return {
        k: float(v)
        for k, v in row.items()
        if "," in k and isinstance(v, int | float) and not isinstance(v, bool)
    }


def summary_line(label: str, results: dict, task: str) -> str:
    """One line: what was scored, on how many problems at how many shots, and each score."""
    row = scores(results, task)
    parts = []
    for key, value in row.items():
        metric, _, filt = key.partition(",")
        if metric.endswith("_stderr"):
            continue
        stderr = row.get(f"{metric}_stderr,{filt}")
        parts.append(
            f"{metric} {filt} {value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")
        )
    n = results["n-samples"][task]["effective"]
    shots = results["n-shot"][task]
    return f"{label}: {task} {shots}-shot, {n} problems: " + ", ".join(parts)


def metric_key(task: str, shots: int, key: str) -> str:
    """The MLflow metric of lm-eval's "<metric>,<filter>": lm_eval.<task>.<n>shot.<metric>.
    <filter>, with what MLflow refuses in a key made "_"."""
    name = f"lm_eval.{task}.{shots}shot.{key.replace(',', '.')}"
    return re.sub(r"[^\w\-./ ]", "_", name)


def log_scores(state: StudyState, run_id: str, rank: int, results: dict, task: str) -> None:
    """The numbers on the method's run, step = rank, beside its test_score curve."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now, shots = int(time.time() * 1000), results["n-shot"][task]
    metrics = [
        Metric(metric_key(task, shots, k), v, now, rank) for k, v in scores(results, task).items()
    ]
    MlflowClient(state.tracking_uri).log_batch(run_id, metrics=metrics)


def write_summary(out: Path, lines: list[str]) -> Path:
    path = out / SUMMARY_FILE
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def evaluate_study(
    study_dir: Path,
    method: str,
    ranks: list[int],
    out: Path,
    request: Request,
    data: Path,
    include: list[Path],
) -> list[str]:
    """Export the study's chosen trial of `method` (first seed) at each rank to <out>/rank<k>,
    score each with lm-eval beside it, and log the numbers to the method's MLflow run.
    Returns the summary lines (also written to <out>/evaluate_summary.txt)."""
    study_dir = study_dir.resolve()
    state = read_study(study_dir)
    spec = study_spec(state)
    try:
        plan_exports(state, spec, method, ranks, None)
    except ExportError as e:  # export's --rank is this command's --ranks
        raise EvaluateError(re.sub(r"^--rank:", "--ranks:", str(e))) from None
    run_id = method_run(state, method)
    manager = task_manager(request.task, data, include, out)
    # run_export writes one rank into the folder given, several into its rank<k> folders
    folders = run_export(
        study_dir, method, ranks, out if len(ranks) > 1 else out / f"rank{ranks[0]}"
    )
    base = study_base(spec, out)
    lines = []
    for rank, folder in zip(ranks, folders, strict=True):
        results = run_lm_eval(base, folder, request, manager)
        write_results(results, folder)
        lines.append(summary_line(f"{method} rank {rank}", results, request.task))
        if run_id is not None:
            log_scores(state, run_id, rank, results, request.task)
    if run_id is None:
        lines.append(f"(not logged to MLflow: the study has no method run of {method})")
    write_summary(out, lines)
    return lines


def evaluate_adapter(
    adapter: Path, base: str | None, out: Path, request: Request, data: Path, include: list[Path]
) -> list[str]:
    """Score an exported PEFT adapter with lm-eval; results in `out`."""
    base = adapter_base(adapter, base)
    manager = task_manager(request.task, data, include, out)
    results = run_lm_eval(base, adapter, request, manager)
    write_results(results, out)
    lines = [summary_line(str(adapter), results, request.task)]
    write_summary(out, lines)
    return lines
