"""How `rankstudy` fails: bad input is a short message naming the field or option (status 2),
and anything else is a bug in rankstudy, never "invalid input": its traceback and a line that
says so (status 1). Run in this process, with a bug planted where a check calls inward."""

import pytest

from rankstudy.commands.cli import main
from rankstudy.study import preflight
from studies import ROOT

SPEC = str(ROOT / "jobs" / "specs" / "planted-cpu.yaml")
BUG = "this is a bug in rankstudy, not in your input; please report it with the traceback above"


def _run(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["plan", "--set", "training.lr=-1"],
            "training.lr: Input should be greater than 0",
        ),
        (
            ["plan", "--set", "training.lr=[1,"],
            "--set 'training.lr=[1,': the value is not valid YAML (expected the node content",
        ),
        (
            ["trial", "--arm", "matryoshka", "--set", "adapters.max_rank=0"],
            "adapters.max_rank: Input should be greater than 0",
        ),
        (
            ["trial", "--arm", "lora_r999"],
            "arm: 'lora_r999' has rank 999 outside 1..max_rank=32",
        ),
    ],
    ids=["spec field", "--set value", "trial's spec field", "--arm"],
)
def test_bad_input_is_one_line_naming_the_field(args, message, capsys):
    code, err = _run([args[0], "--spec", SPEC, *args[1:]], capsys)
    assert code == 2, err
    head, line = err.splitlines()  # the command, then the field and what was wrong
    assert head == f"rankstudy {args[0]}: invalid input"
    assert line.startswith(message), line


@pytest.mark.parametrize("command", ["plan", "study"])
def test_a_bug_is_a_traceback_that_says_so(command, monkeypatch, capsys, tmp_path):
    """A plain ValueError from inside the checks (here, counting the data's rows) is rankstudy's
    own: never wrapped as the spec's fault."""

    def bug(spec):
        raise ValueError("rows and labels disagree")

    monkeypatch.setattr(preflight, "split_sizes", bug)
    out = ["--out", str(tmp_path / "out")] if command == "study" else []
    code, err = _run([command, "--spec", SPEC, *out], capsys)
    assert code == 1, err
    assert err.startswith("Traceback (most recent call last):"), err
    assert "ValueError: rows and labels disagree" in err
    assert err.splitlines()[-1] == f"rankstudy {command}: {BUG}"
    assert "invalid input" not in err
    assert not (tmp_path / "out").exists()


def test_ctrl_c_is_not_a_bug(monkeypatch, capsys):
    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(preflight, "split_sizes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["plan", "--spec", SPEC])
    assert "bug" not in capsys.readouterr().err
