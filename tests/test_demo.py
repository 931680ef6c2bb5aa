"""The demo (`make demo`): it runs end to end, writes its table with the commit that made it,
and `--record` puts that table into docs/ and the README block, which must match."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_reg.cli import main
from sparse_reg.experiments.demo import README_END, README_START, record_demo, results_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_and_records_its_table(tmp_path, monkeypatch, capsys, hopper_random_npz):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text(f"# x\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    assert main(["demo", "--dataset", hopper_random_npz, "--size", "1000", "--steps", "80", "--out", "demo",
                 "--record"]) == 0
    results = (tmp_path / "demo" / "results.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| BC dense", "| BC Sparse-Reg", "| IQL dense", "| IQL Sparse-Reg"]
    assert [row.split(" | ")[1] for row in rows] == ["0%", "95%", "0%", "95%"]
    assert "at commit `" in results and "80 steps per run" in results
    assert (tmp_path / "docs" / "demo_results.md").read_text() == results
    assert (tmp_path / "docs" / "demo_learning_curves.png").stat().st_size > 0
    readme = (tmp_path / "README.md").read_text()
    assert readme == f"# x\n\nbefore\n{README_START}\n{results}{README_END}\nafter\n"
    assert "recorded the demo's table" in capsys.readouterr().out


def test_record_demo_refuses_without_results_or_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(FileNotFoundError, match="run `sparse-reg demo"):
        record_demo(tmp_path / "demo", tmp_path / "docs", readme)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "results.md").write_text("table\n")
    with pytest.raises(ValueError, match="demo-results:start"):
        record_demo(tmp_path / "demo", tmp_path / "docs", readme)
    assert readme.read_text() == "no markers here\n"


def test_results_markdown_layout():
    text = results_markdown([("BC dense", "0%", "6809", "68.7", "0.0642")], "d", 10_000, 20_000, 250.0)
    lines = text.splitlines()
    assert lines[0].startswith("`sparse-reg demo` (d, 10,000 training transitions, 20,000 steps per run, seed 0) at commit `")
    assert lines[0].endswith("4.2 min for the four runs:")
    assert lines[2:] == ["| run | sparsity (actor) | final return | normalised score | validation MSE |",
                         "| --- | --- | --- | --- | --- |", "| BC dense | 0% | 6809 | 68.7 | 0.0642 |"]


def test_readme_shows_the_recorded_demo_table():
    # The README's block is what `make demo-record` last wrote; edit neither by hand.
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(README_START) + len(README_START) + 1 : readme.index(README_END)]
    assert block == (ROOT / "docs" / "demo_results.md").read_text()
