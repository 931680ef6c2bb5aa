"""The command line: a working train/evaluate round trip, and one-line errors on bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from sparse_reg.cli import main
from sparse_reg.data import save_npz

TINY = ["--size", "1000", "--validation-size", "500", "--steps", "100", "--eval-every", "100",
        "--eval-episodes", "1", "--hidden-dims", "16", "16", "--no-progress"]


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_then_evaluate(tmp_path, capsys, hopper_random_npz):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "--algo", "bc", "--dataset", hopper_random_npz, "--env", "Hopper-v5",
                              "--sparsity", "auto", "--out", out, *TINY)
    assert code == 0, stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "bc" and summary["size"] == 1000 and summary["steps"] == 100
    assert summary["sparsity"]["actor"] == pytest.approx(0.95, abs=1e-3)
    code, stdout, _ = run_cli(capsys, "evaluate", out, "--episodes", "2", "--json")
    assert code == 0
    assert len(json.loads(stdout)["returns"]) == 2


def expect_error(capsys, fragment, *argv):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparse-reg: error:"), err
    assert fragment in lines[0], lines[0]


def test_unknown_algorithm(tmp_path, capsys, hopper_random_npz):
    expect_error(capsys, "unknown algorithm 'sac'", "train", "--algo", "sac", "--dataset", hopper_random_npz,
                 "--out", tmp_path / "r", *TINY)


def test_unknown_dataset(tmp_path, capsys):
    expect_error(capsys, "unknown dataset 'no-such-data-v0'", "train", "--dataset", "no-such-data-v0",
                 "--out", tmp_path / "r", *TINY)


def test_missing_dataset_file(tmp_path, capsys):
    expect_error(capsys, "missing.hdf5", "train", "--dataset", tmp_path / "missing.hdf5", "--out", tmp_path / "r",
                 *TINY)


def test_unknown_environment(tmp_path, capsys, hopper_random_npz):
    expect_error(capsys, "NoSuchEnv-v9", "train", "--dataset", hopper_random_npz, "--env", "NoSuchEnv-v9",
                 "--out", tmp_path / "r", *TINY)


def test_environment_that_does_not_match_the_data(tmp_path, capsys, hopper_random_npz):
    expect_error(capsys, "HalfCheetah-v5", "train", "--dataset", hopper_random_npz, "--env", "HalfCheetah-v5",
                 "--out", tmp_path / "r", *TINY)


def test_size_larger_than_the_data(tmp_path, capsys, hopper_random_npz):
    argv = ["train", "--dataset", hopper_random_npz, "--out", tmp_path / "r", *TINY]
    argv[argv.index("--size") + 1] = "50000"
    expect_error(capsys, "50000", *argv)


@pytest.mark.parametrize("value", ["1.0", "-0.1", "abc", "nan"])
def test_sparsity_outside_range(tmp_path, capsys, hopper_random_npz, value):
    expect_error(capsys, "sparsity", "train", "--dataset", hopper_random_npz, "--sparsity", value,
                 "--out", tmp_path / "r", *TINY)


def test_nan_in_dataset(tmp_path, capsys, hopper_random):
    arrays = hopper_random.arrays()
    arrays["rewards"] = arrays["rewards"].copy()
    arrays["rewards"][17] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    expect_error(capsys, "NaN", "train", "--dataset", path, "--env", "Hopper-v5", "--out", tmp_path / "r", *TINY)


def test_mismatched_lengths(tmp_path, capsys, hopper_random):
    arrays = hopper_random.arrays()
    arrays["actions"] = arrays["actions"][:-5]
    path = tmp_path / "short.npz"
    np.savez(path, **arrays)
    expect_error(capsys, "mismatched lengths", "train", "--dataset", path, "--env", "Hopper-v5",
                 "--out", tmp_path / "r", *TINY)


def test_corrupt_hdf5(tmp_path, capsys):
    path = tmp_path / "hopper_corrupt.hdf5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    expect_error(capsys, "hopper_corrupt.hdf5", "train", "--dataset", path, "--out", tmp_path / "r", *TINY)


def test_hdf5_missing_key(tmp_path, capsys):
    path = tmp_path / "hopper_partial.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((10, 11), np.float32)
    expect_error(capsys, "hopper_partial.hdf5", "train", "--dataset", path, "--out", tmp_path / "r", *TINY)


def test_existing_output_directory_is_not_overwritten(tmp_path, capsys, hopper_random_npz):
    out = tmp_path / "r"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    expect_error(capsys, "already exists", "train", "--dataset", hopper_random_npz, "--out", out, *TINY)
    assert (out / "precious.txt").read_text() == "keep me"


def test_resume_without_checkpoint(tmp_path, capsys, hopper_random_npz):
    expect_error(capsys, "no checkpoint", "train", "--dataset", hopper_random_npz, "--out", tmp_path / "r",
                 "--resume", *TINY)


def test_unknown_algorithm_option(tmp_path, capsys, hopper_random_npz):
    expect_error(capsys, "unknown option", "train", "--algo", "iql", "--set", "betta=3", "--dataset",
                 hopper_random_npz, "--out", tmp_path / "r", *TINY)


def test_evaluate_a_directory_that_is_not_a_run(tmp_path, capsys):
    expect_error(capsys, "not a run directory", "evaluate", tmp_path)


def test_overwrite_replaces_an_existing_run(tmp_path, capsys, hopper_random_npz):
    out = tmp_path / "r"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, _, _ = run_cli(capsys, "train", "--algo", "bc", "--dataset", hopper_random_npz, "--out", out,
                         "--overwrite", *TINY)
    assert code == 0 and not (out / "old.txt").exists() and (out / "summary.json").exists()


def test_npz_round_trip_through_cli_keeps_env(tmp_path, capsys, hopper_random):
    path = tmp_path / "data.npz"
    save_npz(hopper_random, path)  # stores env id: no --env needed
    code, _, err = run_cli(capsys, "train", "--algo", "bc", "--dataset", path, "--out", tmp_path / "r", *TINY)
    assert code == 0, err


# ----------------------------------------------------------------------------- validation before anything is made


@pytest.mark.parametrize("argv, fragment", [
    (["--set", "beta=abc"], "beta must be a number"),
    (["--set", "batch_size=2.5"], "batch_size must be a whole number"),
    (["--set", "batch_size=0"], "batch_size must be > 0"),
    (["--hidden-dims", "0"], "hidden_dims must be positive"),
    (["--seeds", ""], "--seeds"),
    (["--reference", "d4rl-ish"], "reference"),
])
def test_bad_options_fail_in_one_line_and_leave_no_run_directory(tmp_path, capsys, hopper_random_npz, argv, fragment):
    out = tmp_path / "r"
    expect_error(capsys, fragment, "train", "--algo", "iql", "--dataset", hopper_random_npz, "--out", out, *TINY, *argv)
    assert not out.exists()  # nothing half-made that would block the corrected command


def test_out_pointing_to_a_file_fails_in_one_line(tmp_path, capsys, hopper_random_npz):
    (tmp_path / "file").write_text("not a directory")
    expect_error(capsys, "not a directory", "train", "--algo", "bc", "--dataset", hopper_random_npz,
                 "--out", tmp_path / "file", *TINY)
    expect_error(capsys, "under a file", "train", "--algo", "bc", "--dataset", hopper_random_npz,
                 "--out", tmp_path / "file" / "run", *TINY)
    assert (tmp_path / "file").read_text() == "not a directory"


def test_counts_in_a_config_are_read_like_on_the_command_line():
    from sparse_reg.training.config import RunConfig

    assert RunConfig(size="2k", steps="1M").size == 2000  # e.g. size = ["2k"] in a TOML grid
    with pytest.raises(ValueError, match="size must be a whole number"):
        RunConfig(size="2 thousand")


def test_actions_outside_the_policy_range_are_warned_about(tmp_path, capsys, hopper_random):
    arrays = hopper_random.arrays()
    arrays["actions"] = arrays["actions"] * 2.0
    path = tmp_path / "hopper_wide.npz"
    np.savez(path, **arrays)
    with pytest.warns(UserWarning, match=r"policies act in \[-1, 1\]"):
        code, _, err = run_cli(capsys, "train", "--algo", "bc", "--dataset", path, "--out", tmp_path / "r", *TINY)
    assert code == 0, err


# ----------------------------------------------------------------------------- conventions


def test_version_help_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("sparse-reg 0.")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: iql)", "(default: 10000)", "(default: 1000000)", "(default: [256, 256])",
                    "(default: dataset)", "(default: auto)"):
        assert default in text, default
    assert "examples: sparse-reg train" in text and text.rstrip().endswith("# continue after an interruption")


def test_datasets_list_is_not_truncated_when_piped(tmp_path, monkeypatch):
    from sparse_reg.console import wide_console

    console = wide_console(file=open(tmp_path / "out.txt", "w"))  # a file: not a terminal
    assert not console.is_terminal and console.width >= 200


def test_exported_policy_runs_without_the_project_and_matches_agent_act(tmp_path, capsys, hopper_random_npz,
                                                                           hopper_random):
    import subprocess
    import sys

    from sparse_reg.training.trainer import load_agent

    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--algo", "iql", "--dataset", hopper_random_npz, "--out", out, *TINY)
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "export-policy", out, "--out", tmp_path / "policy.jaxexport")
    assert code == 0 and "policy.jaxexport" in stdout, err
    observations = hopper_random.observations[:5]
    np.save(tmp_path / "obs.npy", observations)
    loader = (
        "import sys, jax, numpy as np\n"
        f"policy = jax.export.deserialize(open({str(tmp_path / 'policy.jaxexport')!r}, 'rb').read())\n"
        f"obs = np.load({str(tmp_path / 'obs.npy')!r})\n"
        f"np.save({str(tmp_path / 'actions.npy')!r}, np.asarray(policy.call(obs)))\n"
        "np.asarray(policy.call(obs[:1]))  # any batch size\n"
        "assert not any(m.startswith('sparse_reg') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", loader], check=True, capture_output=True, text=True, cwd=tmp_path)
    expected = load_agent(out).act(observations)
    np.testing.assert_allclose(np.load(tmp_path / "actions.npy"), expected, rtol=1e-5, atol=1e-6)


def test_the_readme_python_snippet_runs_on_a_tiny_budget(tmp_path, hopper_random_npz, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = readme.split("## Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    tiny = {
        '"halfcheetah-expert-v0"': repr(hopper_random_npz),
        "size=10_000": "size=1000, validation_size=500, eval_every=100, eval_episodes=1, hidden_dims=(16, 16)",
        "steps=100_000": "steps=100",
        "episodes=3": "episodes=1",
    }
    for full, small in tiny.items():
        assert full in snippet, full  # the test follows the README
        snippet = snippet.replace(full, small)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # every name it uses is defined in it
    assert namespace["actions"].shape == (5, 3) and (tmp_path / "policy.jaxexport").is_file()


def test_train_keeping_the_lowest_validation_mse_then_evaluate_and_export_that_agent(tmp_path, capsys,
                                                                                     hopper_random_npz):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--algo", "bc", "--dataset", hopper_random_npz, "--env", "Hopper-v5",
                                "--out", out, "--keep-lowest-validation-mse", *TINY, "--steps", "300")
    assert code == 0, err
    lowest = json.loads((out / "summary.json").read_text())["lowest_validation_mse"]
    assert f"lowest validation MSE {lowest['validation_mse']:.4g} at step {lowest['step']:,}" in stdout
    code, stdout, _ = run_cli(capsys, "evaluate", out, "--episodes", "1", "--json",
                              "--checkpoint", "lowest-validation-mse")
    assert code == 0 and json.loads(stdout)["step"] == lowest["step"]
    code, stdout, _ = run_cli(capsys, "export-policy", out, "--out", tmp_path / "p.jaxexport",
                              "--checkpoint", "lowest-validation-mse")
    assert code == 0 and f"step {lowest['step']}" in stdout
    plain = tmp_path / "plain"
    assert run_cli(capsys, "train", "--algo", "bc", "--dataset", hopper_random_npz, "--out", plain, *TINY)[0] == 0
    expect_error(capsys, "--keep-lowest-validation-mse", "evaluate", plain, "--checkpoint", "lowest-validation-mse")
    expect_error(capsys, "validation_size > 0", "train", "--dataset", hopper_random_npz, "--out", tmp_path / "x",
                 "--keep-lowest-validation-mse", *TINY, "--validation-size", "0")


def test_train_seeds_resume_each_seed_from_its_own_recorded_config(tmp_path, capsys, hopper_random_npz):
    """Before: every seed of `train --seeds ... --resume` got the first seed's recorded config, so seeds
    recorded with other settings could not be resumed together (vmap: 'must differ only in their seed')."""
    out = tmp_path / "runs"
    base = ["--algo", "bc", "--dataset", hopper_random_npz, "--env", "Hopper-v5", "--out", out, *TINY]
    assert run_cli(capsys, "train", *base, "--seeds", "0")[0] == 0
    assert run_cli(capsys, "train", *base, "--seeds", "1", "--steps", "200")[0] == 0
    code, stdout, err = run_cli(capsys, "train", "--out", out, "--seeds", "0,1", "--resume", "--parallel", "vmap",
                                "--no-progress")
    assert code == 0, err
    summaries = [json.loads((out / f"seed_{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert [s["steps"] for s in summaries] == [100, 200]
    assert [s["seed"] for s in summaries] == [0, 1]
    assert "bc over 2 seeds" in stdout
