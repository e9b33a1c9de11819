"""`rankstudy plan` and `rankstudy study` refuse a bad input alike: the same message from both,
from the one path they share (rankstudy.preflight), before the study starts Ray or writes.

Every bad input of the suite that either command can judge on this machine runs through both,
in this process: the study's Ray start is replaced by a failure, so a case the study let
through would fail here instead of starting a cluster."""

import pytest

from bad_inputs import MODEL_FIT, SPEC
from rankstudy import ray_cluster
from rankstudy.cli import main
from studies import GSM8K_DATA, ROOT, free_port, write_spec

ROWS = '{"prompt": "a", "response": "b"}\n'


def _jsonl(tmp_path, text: str) -> dict:
    """The tiny model with a byte vocabulary, trained on a jsonl file holding `text`."""
    (tmp_path / "train.jsonl").write_text(text)
    task = {"kind": "jsonl", "train": str(tmp_path / "train.jsonl"), "max_length": 32}
    return SPEC | {"model": {"tiny": SPEC["model"]["tiny"] | {"vocab": 258}}, "task": task}


def _gsm8k(tmp_path, **fields) -> dict:
    spec = _jsonl(tmp_path, ROWS)
    return spec | {"task": {"kind": "gsm8k", "max_length": 32} | fields}


def _gguf_junk(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file" * 64)
    return SPEC | {"model": {"gguf": str(tmp_path / "junk.gguf")}}


def _folder_without_config(tmp_path):
    (tmp_path / "model").mkdir()
    return SPEC | {"model": {"name": str(tmp_path / "model")}}


def _fit(override: str):
    """A MODEL_FIT case: the tiny spec and one --set (a text task on the tiny model gets a byte
    vocabulary and 64 positions, as there)."""
    sets = [override]
    if override.startswith("task="):
        sets += ["model.tiny.vocab=258", "model.tiny.max_positions=64"]
    return lambda tmp_path: (SPEC, sets)


PORT = free_port()  # nothing listens there
CASES = [
    *((f"model fit: {o[:28]}", _fit(o), m) for o, m in MODEL_FIT),
    ("a model folder without a config", _folder_without_config, "cannot read the model's config"),
    ("a file that is not GGUF", _gguf_junk, "is not a GGUF file"),
    ("a negative learning rate", lambda t: SPEC | {"training": {"lr": -1}}, "training.lr: Input"),
    (
        "a model name that is neither a folder nor a hub id",
        lambda t: SPEC | {"model": {"name": "org/team/model"}},
        "model.name: 'org/team/model' is neither a local folder nor a hub id",
    ),
    (
        "flash attention on CPU trials",
        lambda t: SPEC | {"model": SPEC["model"] | {"attn_implementation": "flash_attention_2"}},
        "model.attn_implementation: flash_attention_2 runs on CUDA GPUs only",
    ),
    (
        "a jsonl line without the response",
        lambda t: _jsonl(t, ROWS + '{"prompt": "a"}\n'),
        "task.jsonl.train: {tmp}/train.jsonl line 2 has no string field 'response'",
    ),
    (
        "a jsonl line that is not JSON",
        lambda t: _jsonl(t, ROWS + '{"prompt": "a", \n'),
        "task.jsonl.train: {tmp}/train.jsonl line 2 is not valid JSON",
    ),
    (
        "a jsonl file with no rows",
        lambda t: _jsonl(t, "\n"),
        "task.jsonl.train: {tmp}/train.jsonl holds no examples",
    ),
    (
        "more held out than a jsonl file holds",
        lambda t: _jsonl(t, ROWS * 3) | {"task": _jsonl(t, ROWS * 3)["task"] | {"test": None}},
        "task.jsonl.validation_size: train file",
    ),
    (
        "a GSM8K folder without its files",
        lambda t: _gsm8k(t, path=str(t)),
        "task.gsm8k.path: {tmp} lacks",
    ),
    (
        "more GSM8K problems held out than there are",
        lambda t: _gsm8k(t, path=str(GSM8K_DATA), validation_size=10**6),
        "task.gsm8k.validation_size: ",
    ),
    (
        "a storage folder that is not there",
        lambda t: SPEC | {"storage": str(t / "mnt" / "shared")},
        "storage: {tmp}/mnt/shared is not an existing folder",
    ),
    (
        "a storage that is neither a URI nor an absolute path",
        lambda t: SPEC | {"storage": "relative/path"},
        "storage: 'relative/path' is neither a storage URI",
    ),
    (
        "an MLflow server that does not answer",
        lambda t: SPEC | {"tracking": {"uri": f"http://127.0.0.1:{PORT}"}},
        f"tracking.uri: nothing answers at http://127.0.0.1:{PORT} (the MLflow server)",
    ),
]


def _refusal(command: str, spec, sets: list[str], out, capsys) -> str:
    args = [command, "--spec", str(spec), *(a for s in sets for a in ("--set", s))]
    args += ["--out", str(out)] if command == "study" else []
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 2, capsys.readouterr()
    err = capsys.readouterr().err
    prefix = f"rankstudy {command}: invalid input\n"
    assert err.startswith(prefix), err
    return err.removeprefix(prefix)


@pytest.mark.parametrize("make,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_and_study_refuse_alike(make, message, tmp_path, capsys, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("the study went on to start Ray")

    monkeypatch.setattr(ray_cluster, "connect_ray", no_ray)
    monkeypatch.chdir(ROOT)
    made = make(tmp_path)
    spec, sets = made if isinstance(made, tuple) else (made, [])
    spec = write_spec(tmp_path, spec)
    planned = _refusal("plan", spec, sets, None, capsys)
    studied = _refusal("study", spec, sets, tmp_path / "out", capsys)
    assert planned == studied
    assert message.format(tmp=tmp_path) in planned, planned
    assert not (tmp_path / "out").exists()  # nothing written
