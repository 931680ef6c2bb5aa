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
    code = main([str(a) for a in argv])
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
