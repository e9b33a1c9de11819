"""`rankstudy evaluate`: lm-eval's own scores of an exported adapter folder and of a study's
chosen trial at two ranks, offline on the real GSM8K files, equal to lm-eval's simple_evaluate
run directly in the test on the same folders with lm-eval's gsm8k task built here; the numbers
on the method's MLflow run at step = rank; bad requests refused, naming the option, before any
model is loaded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
import yaml
from lm_eval.tasks import TaskManager
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM

from rankstudy.adapters import adapter_layers, attach_adapters, export_peft
from rankstudy.commands import cli
from rankstudy.model.tiny import tiny_model
from rankstudy.model.tokenizer import byte_tokenizer
from rankstudy.study.state import STATE_FILE, read_state
from studies import GSM8K_DATA, ROOT

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
# two problems, one exemplar, eight generated tokens: the tiny model's answers are noise, so
# what is compared is every generation, its filtered answer and the scores
SETTINGS = {"num_fewshot": 1, "limit": 2, "gen_kwargs": "max_gen_toks=8"}
ARGS = ["--shots", "1", "--limit", "2", "--gen-kwargs", "max_gen_toks=8", "--data", GSM8K_DATA]
SCORES = ("exact_match,strict-match", "exact_match,flexible-extract")


def evaluate(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rankstudy.commands.cli", "evaluate", *map(str, [*args, *ARGS])]
    # an in-process trial earlier on this worker leaves DeepSpeed's LOCAL_RANK in os.environ:
    # inherited alone, accelerate (inside lm-eval) takes it for a torchrun launch and fails
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_RANK"} | OFFLINE
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study(served_study) -> Path:
    return served_study[1]


@pytest.fixture(scope="module")
def evaluated(study, tmp_path_factory) -> tuple[Path, str]:
    """The study's matryoshka trial scored at ranks 1 and 8: (out folder, stdout)."""
    out = tmp_path_factory.mktemp("evaluated")
    done = evaluate("--study", study, "--method", "matryoshka", "--ranks", "1,8", "--out", out)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done.stdout


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> tuple[Path, Path]:
    """(base, adapter): a tiny Llama saved with the byte tokenizer, and a rank-4 LoRA on it
    strong enough to change what the model generates, exported with the base's folder."""
    folder = tmp_path_factory.mktemp("adapter")
    tiny_model("llama", hidden=64, layers=2, vocab=258).save_pretrained(folder / "base")
    byte_tokenizer().save_pretrained(folder / "base")
    model = AutoModelForCausalLM.from_pretrained(folder / "base")
    attach_adapters(model, "lora", 4)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    return folder / "base", export_peft(model, 4, folder / "rank4")


def direct(base: Path, adapter: Path | None) -> dict:
    """lm-eval's simple_evaluate on the folders, its gsm8k.yaml reading the local files."""
    config = yaml.safe_load(
        (Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text()
    )
    files = {s: str(GSM8K_DATA / f"{s}.jsonl") for s in ("train", "test")}
    config |= {"dataset_path": "json", "dataset_name": None}
    config |= {"dataset_kwargs": {"data_files": files}}
    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(base)} | ({"peft": str(adapter)} if adapter else {}),
        tasks=[config],
        task_manager=TaskManager(include_defaults=False),
        device="cpu",
        **SETTINGS,
    )


def generations(samples: list[dict]) -> list:
    return [(s["doc_id"], s["arguments"], s["resps"], s["filtered_resps"]) for s in samples]


def assert_same(folder: Path, theirs: dict) -> None:
    """The results.json and samples in `folder` are lm-eval's `theirs`, number for number."""
    ours = json.loads((folder / "results.json").read_text())
    assert ours["results"]["gsm8k"] == pytest.approx(theirs["results"]["gsm8k"])
    assert ours["n-shot"] == theirs["n-shot"] == {"gsm8k": 1}
    assert ours["configs"]["gsm8k"]["generation_kwargs"]["max_gen_toks"] == 8
    samples = [json.loads(line) for line in (folder / "samples_gsm8k.jsonl").open()]
    assert generations(samples) == generations(json.loads(json.dumps(theirs["samples"]["gsm8k"])))


@pytest.mark.slow
def test_an_adapter_folder_scores_as_lm_eval_does(adapter, tmp_path, capsys):
    base, folder = adapter
    with pytest.raises(SystemExit) as exit:  # its base is the adapter's own
        cli.main(["evaluate", "--adapter", str(folder), "--out", str(tmp_path), *map(str, ARGS)])
    assert exit.value.code == 0
    theirs = direct(base, folder)
    assert_same(tmp_path, theirs)
    line = (tmp_path / "evaluate_summary.txt").read_text()
    assert line.startswith(f"{folder}: gsm8k 1-shot, 2 problems: exact_match strict-match")
    assert line in capsys.readouterr().out
    # the comparison sees the adapter: without it the base generates otherwise
    assert generations(theirs["samples"]["gsm8k"]) != generations(
        direct(base, None)["samples"]["gsm8k"]
    )


@pytest.mark.slow
def test_a_studys_ranks_score_as_lm_eval_does(study, evaluated, monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    out, stdout = evaluated
    lines = (out / "evaluate_summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["matryoshka rank 1", "matryoshka rank 8"]
    assert all("gsm8k 1-shot, 2 problems: exact_match strict-match" in line for line in lines)
    assert "\n".join(lines) in stdout
    # the exported ranks and the tiny base lm-eval loaded (saved with its byte tokenizer)
    rank8 = json.loads((out / "rank8" / "adapter_config.json").read_text())
    assert rank8["r"] == 8 and (out / "base" / "tokenizer.json").is_file()

    theirs = {k: direct(out / "base", out / f"rank{k}") for k in (1, 8)}
    for k, results in theirs.items():
        assert_same(out / f"rank{k}", results)

    # the numbers on the method's MLflow run, step = rank
    state = read_state(study / STATE_FILE)
    client = MlflowClient(state.tracking_uri)
    [run] = client.search_runs(
        [state.experiment_id], "tags.`rankstudy.trial_key` = 'method/matryoshka'"
    )
    for score in SCORES:
        key = "lm_eval.gsm8k.1shot." + score.replace(",", ".")
        history = client.get_metric_history(run.info.run_id, key)
        assert {m.step: m.value for m in history} == {
            k: pytest.approx(theirs[k]["results"]["gsm8k"][score]) for k in (1, 8)
        }


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "nested_multiloss", "--ranks", "4"], "--method: the study ran no method"),
        (["--method", "matryoshka", "--ranks", "1,3"], "--ranks: 3 is not a rank matryoshka"),
        (["--method", "matryoshka"], "--method, --ranks: give both with --study"),
        (["--method", "dylora", "--ranks", "4", "--task", "arc_easy"], "--task: no task"),
        (["--method", "dylora", "--ranks", "4", "--data", "{tmp}"], "--data: {tmp} has no"),
        (["--method", "dylora", "--ranks", "4", "--base", "{tmp}"], "--base: only with"),
    ],
)
def test_bad_requests_name_the_option(study, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exit:
        cli.main(["evaluate", "--study", str(study), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("rankstudy evaluate: ")
    assert message.format(tmp=tmp_path) in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before anything was written


def test_a_folder_without_an_adapter_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["evaluate", "--adapter", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    assert capsys.readouterr().err.startswith(f"rankstudy evaluate: --adapter: {tmp_path} holds")
