"""The package's layering, checked as a newcomer would break it: each sub-package imports only
those below it (PACKAGES, lowest first), anywhere in a file; core and storage load no torch,
transformers, Ray, DeepSpeed or MLflow; the spec, the plan and the report import no torch or
transformers, nor does planning a study of any task kind; the adapters know nothing of Ray,
DeepSpeed or MLflow; a study's Tune state saved before the sub-packages still unpickles; no
test file imports another; no function in platform/ or dashboards/ runs past 60 lines. Each
import check runs in a fresh interpreter, where nothing was imported before."""

import ast
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from studies import ROOT, TINY, write_spec

HEAVY = ("torch", "transformers")
PACKAGE = ROOT / "platform" / "rankstudy"
# rankstudy's sub-packages, lowest first: each imports only itself and those before it
PACKAGES = (
    "core",
    "storage",
    "adapters",
    "tasks",
    "model",
    "trial",
    "tracking",
    "study",
    "commands",
)
NOT_IN_ADAPTERS = ("ray", "deepspeed", "mlflow")
MAX_LINES = 60


def loaded_after(code: str) -> set[str]:
    """The top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = (
        code
        + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("platform", "dashboards", "tests"))
    }
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_loaded_after_sees_what_a_probe_imports():
    assert "torch" in loaded_after("import torch")


def test_spec_plan_and_report_import_no_torch_or_transformers():
    loaded = loaded_after(
        "import rankstudy.core.spec, rankstudy.study.plan, rankstudy.study.model_fit, "
        "rankstudy_report"
    )
    assert not loaded & set(HEAVY)


def plan_loads(spec: Path) -> set[str]:
    """The top-level packages loaded by `rankstudy plan --spec SPEC`, which must succeed."""
    return loaded_after(
        "from rankstudy.commands.cli import main\n"
        f"try:\n    main(['plan', '--spec', {str(spec)!r}])\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code"
    )


@pytest.mark.parametrize("name", ["planted-cpu.yaml", "smollm2-gsm8k-cpu.yaml"])
def test_planning_a_shipped_study_imports_no_torch_or_transformers(name):
    """The planted task's sizes are its spec's; GSM8K's (the real files, chat template and
    all) are counted on its rows, and the model's shape is read off its GGUF header."""
    loaded = plan_loads(ROOT / "jobs" / "specs" / name)
    assert "rankstudy" in loaded and not loaded & set(HEAVY)


def test_planning_a_jsonl_study_imports_no_torch_or_transformers(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(40)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"kind": "jsonl", "train": str(train), "validation_size": 5, "max_length": 64}
    spec = TINY | {"model": {"tiny": TINY["model"]["tiny"] | {"vocab": 512}}, "task": task}
    loaded = plan_loads(write_spec(tmp_path, spec))
    assert "rankstudy" in loaded and not loaded & set(HEAVY)


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (functions included), by its top-level name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def rankstudy_imports(path: Path) -> set[str]:
    """Every rankstudy module a file imports, anywhere in it, by its full dotted name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rankstudy.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rankstudy."):
            found.add(node.module)
    return found


def layer_breaks(package: Path) -> list[str]:
    """'package/file imports rankstudy.X' for every import of a sub-package above the file's
    own, and 'file: outside every sub-package' for a module beside them."""
    breaks = [f"{p.name}: outside every sub-package" for p in package.glob("[!_]*.py")]
    for level, name in enumerate(PACKAGES):
        for path in sorted((package / name).glob("*.py")):
            for module in sorted(rankstudy_imports(path)):
                target = module.split(".")[1]
                if target not in PACKAGES or PACKAGES.index(target) > level:
                    breaks.append(f"{name}/{path.name} imports {module}")
    return breaks


def test_an_import_from_a_higher_layer_is_found(tmp_path):
    for name in ("core", "study"):
        (tmp_path / name).mkdir()
    (tmp_path / "core" / "spec.py").write_text("def f():\n    from rankstudy.study.plan import x\n")
    (tmp_path / "study" / "plan.py").write_text("from rankstudy.core import spec\n")
    (tmp_path / "loose.py").write_text("")
    assert layer_breaks(tmp_path) == [
        "loose.py: outside every sub-package",
        "core/spec.py imports rankstudy.study.plan",
    ]


def test_each_subpackage_imports_only_those_below_it():
    assert sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()) == sorted(
        PACKAGES
    )
    assert layer_breaks(PACKAGE) == []


def test_core_and_storage_load_no_torch_ray_deepspeed_or_mlflow():
    modules = [
        f"rankstudy.{name}.{p.stem}"
        for name in ("core", "storage")
        for p in (PACKAGE / name).glob("[!_]*.py")
    ]
    loaded = loaded_after(f"import {', '.join(modules)}")
    assert not loaded & {*HEAVY, *NOT_IN_ADAPTERS}


def test_a_tuner_saved_before_the_subpackages_unpickles_to_todays_classes():
    """tuner.pkl of the SmolLM2 protocol study, saved by the flat package: Tune unpickles it on
    --resume, by the module paths the classes had then."""
    from rankstudy.storage.atomic_fs import AtomicLocalFiles
    from rankstudy.study.arm_scheduler import ArmASHA
    from rankstudy.study.search import ArmSearch
    from rankstudy.study.tuner import TrialEvents

    saved = (ROOT / "tests" / "fixtures" / "tuner-before-subpackages.pkl").read_bytes()
    assert b"rankstudy.study_tuner" in saved and b"rankstudy.arm_scheduler" in saved
    state = pickle.loads(saved)
    tune_config, run_config = state["_tune_config"], state["_run_config"]
    assert type(tune_config.search_alg) is ArmSearch
    assert type(tune_config.scheduler) is ArmASHA
    assert [type(c) for c in run_config.callbacks] == [TrialEvents]
    assert isinstance(run_config.storage_filesystem.handler, AtomicLocalFiles)
    # restored by a running study, the callback is that study's own: its trials record into it
    ended, waiting, disk = object(), object(), object()
    running = TrialEvents(ended, waiting, disk)
    try:
        (restored,) = pickle.loads(saved)["_run_config"].callbacks
    finally:
        TrialEvents.running = None
    assert restored is not running
    assert (restored.ended, restored.waiting, restored.disk) == (ended, waiting, disk)


def test_a_trial_imports_deepspeed_without_the_mlflow_of_its_autotuner():
    """DeepSpeed's autotuner imports MLflow with it (seconds of CPU in each trial process); the
    trial's import leaves it out, and MLflow imports as usual afterwards."""
    load = "from rankstudy.model.engine import import_deepspeed\nds = import_deepspeed()\n"
    assert "mlflow" not in loaded_after(load + "assert not ds.autotuning.autotuner.has_mlflow")
    assert "mlflow" in loaded_after(load + "import mlflow.tracking")


def test_the_adapters_know_nothing_of_ray_deepspeed_or_mlflow():
    adapters = ROOT / "platform" / "rankstudy" / "adapters"
    for path in adapters.glob("*.py"):
        assert not imported_names(path) & set(NOT_IN_ADAPTERS), path.name
    modules = ", ".join(f"rankstudy.adapters.{p.stem}" for p in adapters.glob("[!_]*.py"))
    assert not loaded_after(f"import {modules}") & set(NOT_IN_ADAPTERS)


def imports_between_tests(folder: Path) -> dict[str, set[str]]:
    """test file -> the test files it imports (a helper belongs in a helper module)."""
    found = {}
    for path in sorted(folder.rglob("test_*.py")):
        tests = {n for n in imported_names(path) if n.startswith("test_")}
        if tests:
            found[path.name] = tests
    return found


def test_a_test_importing_another_is_found(tmp_path):
    (tmp_path / "test_a.py").write_text("import studies\n\n\ndef f():\n    from test_b import x\n")
    (tmp_path / "test_b.py").write_text("from conftest import TARGETS\n")
    assert imports_between_tests(tmp_path) == {"test_a.py": {"test_b"}}


def test_no_test_file_imports_another():
    assert imports_between_tests(ROOT / "tests") == {}


def long_functions(folders: list[Path]) -> list[str]:
    """'path:line name (N lines)' for every function or method longer than MAX_LINES."""
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        where = path.relative_to(folder.parent)
                        found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_long_functions_are_found(tmp_path):
    (tmp_path / "pkg").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions([tmp_path / "pkg"]) == [f"pkg/m.py:5 long ({MAX_LINES + 1} lines)"]


def test_no_function_runs_past_sixty_lines():
    assert long_functions([ROOT / "platform", ROOT / "dashboards"]) == []


def test_test_files_have_distinct_names():
    """pytest imports test files by basename (no packages here): two of one name in different
    folders stop the whole collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
