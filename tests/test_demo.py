"""The main job until the study exists: a short planted-task comparison."""

from rankstudy.demo import run_demo


def test_demo_trains_scores_and_exports(tmp_path, capsys):
    result = run_demo(max_rank=4, steps=40, seed=0, out_dir=str(tmp_path))
    assert result["ranks"] == [1, 2, 4]
    grid = result["curves"]["lora_grid"]
    assert grid[-1] > grid[0] > 0.5  # more rank, closer to the teacher; all beat the base
    assert result["reference"][-1] == 1.0
    out = capsys.readouterr().out
    assert "AURAC log2" in out and "PEFT-loaded score" in out
    line = next(x for x in out.splitlines() if "PEFT-loaded score" in x)
    peft_score, ours = line.split("PEFT-loaded score ")[1].split(" == ours ")
    assert peft_score == ours
    assert (tmp_path / "matryoshka-rank2" / "adapter_model.safetensors").exists()
