"""A hostile user's run directory: damaged or edited files, full and read-only disks, a second trainer,
signals. Every answer is one line; a resume never mixes two runs; --resume or --overwrite then
finishes the run (issue 30)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import Killed, failing_writes, stop_at

from sparse_reg.cli import main
from sparse_reg.training import run_directory, trainer
from sparse_reg.training.config import RunConfig
from sparse_reg.training.logging import read_rows
from sparse_reg.training.run_directory import is_finished, lock_run
from sparse_reg.training.trainer import load_agent, train

RUN = dict(algo="bc", size=1000, validation_size=500, steps=200, eval_every=100, eval_episodes=1, sparsity=0.9,
           mask_interval=100, mask_until=200, hidden_dims=(16, 16))
FLAGS = ["--algo", "bc", "--size", "1000", "--validation-size", "500", "--steps", "200", "--eval-every", "100",
         "--eval-episodes", "1", "--sparsity", "0.9", "--mask-interval", "100", "--mask-until", "200",
         "--hidden-dims", "16", "16", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, hopper_random_npz) -> dict[str, Path]:
    """A finished run and the same run killed right after its step-100 checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    config = RunConfig(**RUN, dataset=hopper_random_npz)
    train(config, root / "finished", progress=False)
    with pytest.raises(Killed):
        train(config, root / "interrupted", progress=False, on_evaluation=stop_at(100))
    return {"finished": root / "finished", "interrupted": root / "interrupted"}


def copy_of(runs, name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shutil.copytree(runs[name], out)
    return out


def cli(capsys, *argv) -> tuple[int, list[str]]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def one_line_error(code: int, err: list[str], *fragments: str) -> None:
    assert code == 2 and len(err) == 1 and err[0].startswith("sparse-reg: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def assert_finished_like(out: Path, reference: Path) -> None:
    """``out`` finished as the uninterrupted run did: same metrics, masks and agent."""
    assert is_finished(out)
    assert comparable(read_rows(out / "metrics.csv")) == comparable(read_rows(reference / "metrics.csv"))
    assert read_rows(out / "masks.csv") == read_rows(reference / "masks.csv")
    assert load_agent(out).step == RUN["steps"]


# ----------------------------------------------------------------------------- 1. damaged logs


DAMAGES = {
    "emptied": lambda raw: b"",
    "header removed": lambda raw: raw.split(b"\n", 1)[1],
    "garbage text": lambda raw: b"this is not a log\nat all\n",
    "binary": lambda raw: b"\xff\xfe\x00\x01" * 8,
    "truncated": lambda raw: raw[: len(raw) // 3],
}


@pytest.mark.parametrize("log", ["metrics.csv", "masks.csv"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_log_is_refused_before_anything_changes(runs, tmp_path, capsys, log, damage):
    """Before: an emptied metrics.csv was resumed into header-less rows and a TypeError, and every
    later resume failed with KeyError: 'step'."""
    out = copy_of(runs, "interrupted", tmp_path)
    (out / log).write_bytes(DAMAGES[damage]((out / log).read_bytes()))
    before = contents(out)
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    one_line_error(code, err, f"{out / log} is damaged", "--overwrite")
    assert contents(out) == before  # the checkpoint, the logs, TensorBoard: nothing changed
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    one_line_error(code, err, f"{out / log} is damaged")  # and it says so every time


def test_a_row_cut_off_by_a_kill_after_the_checkpoint_is_dropped_on_resume(runs, tmp_path, capsys):
    out = copy_of(runs, "interrupted", tmp_path)
    with open(out / "metrics.csv", "a") as f:
        f.write("200,71.6,0.0")  # an append of the next evaluation, killed half-way
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert code == 0, err
    assert_finished_like(out, runs["finished"])


# ----------------------------------------------------------------------------- 2. a run is one run


@pytest.mark.parametrize("edit", [{"seed": 5}, {"algo": "td3bc"}, {"steps": 300}])
def test_an_edited_config_json_is_refused_on_resume_and_evaluate_uses_the_checkpoints_config(
        runs, tmp_path, capsys, edit):
    """Before: seed 0 -> 5 resumed steps 101.. on seed 5's data under seed 0's checkpoint; algo -> td3bc
    failed with AttributeError: 'NoneType' object has no attribute 'keys' (also in evaluate)."""
    out = copy_of(runs, "interrupted", tmp_path)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **edit}))
    before = contents(out)
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    [(key, value)] = edit.items()
    one_line_error(code, err, "config.json no longer describes the run its checkpoint holds",
                   f"{key} {value!r} (the checkpoint: {config[key]!r})", "--overwrite")
    assert contents(out) == before
    code, err = cli(capsys, "evaluate", out, "--episodes", "1", "--json")
    assert code == 0, err
    assert load_agent(out).algorithm.name == "bc"


def test_options_given_again_on_resume_must_be_the_runs_own(runs, tmp_path, capsys, hopper_random_npz):
    """Before: --resume --steps 3000 --algo td3bc silently ignored both flags."""
    out = copy_of(runs, "interrupted", tmp_path)
    code, err = cli(capsys, "train", "--out", out, "--resume", "--steps", "3000", "--algo", "td3bc", "--no-progress")
    one_line_error(code, err, "algo 'td3bc' (the run: 'bc')", "steps 3000 (the run: 200)", "--overwrite")
    # The same command again with --resume, and a setting that only changes speed, are fine: here the former
    # layout's name, which now means live units (what "auto" runs on a CPU, so the metrics are the same).
    code, err = cli(capsys, "train", "--dataset", hopper_random_npz, *FLAGS, "--out", out, "--resume",
                    "--frozen-layout", "kept-values")
    assert code == 0, err
    assert_finished_like(out, runs["finished"])
    assert json.loads((out / "summary.json").read_text())["config"]["frozen_layout"] == "kept-values"


# ----------------------------------------------------------------------------- 3. one line, never a traceback


def test_a_second_trainer_on_a_run_in_use_gets_one_line(runs, tmp_path, capsys):
    out = copy_of(runs, "interrupted", tmp_path)
    holder = lock_run(out)
    try:
        code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    finally:
        holder.close()
    one_line_error(code, err, "being trained by another process")


def test_a_read_only_file_system_gets_one_line(tmp_path, capsys, hopper_random_npz, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    code, err = cli(capsys, "train", "--dataset", hopper_random_npz, *FLAGS, "--out", tmp_path / "r")
    one_line_error(code, err, "Read-only file system", str(tmp_path / "r"))


def test_a_full_disk_gets_one_line_leaves_no_temporary_and_the_run_resumes(runs, tmp_path, capsys, monkeypatch):
    """Before: [Errno 28] as a traceback, and checkpoint.msgpack.tmp kept the disk full."""
    out = copy_of(runs, "interrupted", tmp_path)
    (out / "metrics.csv.tmp").write_bytes(b"left by a process killed while writing")
    with monkeypatch.context() as patch:
        failing_writes(patch, [run_directory], lambda path: path.name.startswith("checkpoint"),
                       lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), modes="w", kept=lambda data: data[:10])
        code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    one_line_error(code, err, "checkpoint.msgpack.tmp: No space left on device")
    assert not list(out.glob("*.tmp"))  # the failed write's temporary, and the stale one, are gone
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert code == 0, err
    assert_finished_like(out, runs["finished"])


def test_a_config_json_that_is_not_json_is_named(runs, tmp_path, capsys):
    """Before: 'Expecting property name ...' without the file's name (and a binary metrics.csv:
    "'utf-8' codec can't decode byte 0xff", see the damaged-log test)."""
    out = copy_of(runs, "interrupted", tmp_path)
    (out / "config.json").write_text("{bad")
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    one_line_error(code, err, f"{out / 'config.json'} is damaged: not JSON", "--overwrite")
    code, err = cli(capsys, "evaluate", out)
    assert code == 0, err  # the checkpoint records its config


# ----------------------------------------------------------------------------- 4. killed before the first checkpoint


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(runs, tmp_path, capsys,
                                                                            hopper_random_npz, monkeypatch):
    """Before: a re-run said 'use --resume or --overwrite' and --resume said 'no checkpoint'."""
    out = tmp_path / "run"

    def die(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "save_checkpoint", die)
        with pytest.raises(Killed):
            main(["train", "--dataset", hopper_random_npz, *FLAGS, "--out", str(out)])
    assert (out / "config.json").exists() and not (out / "checkpoint.msgpack").exists()
    capsys.readouterr()
    with pytest.warns(UserWarning, match="starting from step 0"):
        code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")  # config.json says the rest
    assert code == 0, err
    assert_finished_like(out, runs["finished"])

    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    code, err = cli(capsys, "train", "--out", other, "--resume", "--no-progress")
    one_line_error(code, err, "precious.txt", "--overwrite")
    code, err = cli(capsys, "train", "--out", tmp_path / "none", "--resume", "--no-progress")
    one_line_error(code, err, "no run in", "drop --resume")
    assert not (tmp_path / "none").exists()


# ----------------------------------------------------------------------------- 5. the summary


def test_a_damaged_summary_means_not_finished_and_the_summary_is_written_atomically(runs, tmp_path, capsys,
                                                                                    monkeypatch):
    """Before: a truncated summary.json made sweep skip the run as finished."""
    from sparse_reg.experiments.sweep import RESUME, run_state
    from sparse_reg.training.parallel import Job

    out = copy_of(runs, "finished", tmp_path)
    summary = (out / "summary.json").read_bytes()
    (out / "summary.json").write_bytes(summary[: len(summary) // 2])
    assert not is_finished(out)

    class Run:  # what run_state reads of a sweep's run
        job = Job(RunConfig.of_run(out), out)

    Run.out = out
    assert run_state(Run)[0] == RESUME

    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renamed.append(Path(dst).name) or real_replace(src, dst))
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert code == 0, err
    assert "summary.json" in renamed and is_finished(out)


# ----------------------------------------------------------------------------- 6. signals


def test_sigterm_says_how_to_resume_like_ctrl_c(runs, tmp_path, capsys, monkeypatch):
    out = copy_of(runs, "interrupted", tmp_path)
    real_row = trainer.evaluation_row

    def terminated_at_the_evaluation(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_row(*args)

    class NotHandled(Exception):
        pass

    def not_handled(signum, frame):  # what the test sees if main leaves SIGTERM to its caller's handler
        raise NotHandled

    before = signal.signal(signal.SIGTERM, not_handled)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(trainer, "evaluation_row", terminated_at_the_evaluation)
            code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
        assert signal.getsignal(signal.SIGTERM) == not_handled  # main put the handler back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 143 and err == ["sparse-reg: interrupted (resume with --resume)"]
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert code == 0, err
    assert_finished_like(out, runs["finished"])


# ----------------------------------------------------------------------------- 6. warnings


def test_data_and_masks_that_cannot_train_the_run_are_warned_about(tmp_path, hopper_random, monkeypatch):
    """Before: --sparsity 0.999999 (one weight kept) trained a constant policy, and all-zero rewards or
    fewer transitions than a batch trained, all without a word."""
    data = hopper_random.replace(rewards=hopper_random.rewards * 0.0)
    config = RunConfig(**{**RUN, "algo": "td3bc", "size": 100, "validation_size": 0, "steps": 10, "eval_every": 10})
    with monkeypatch.context() as patch:
        patch.setattr(trainer, "run_group", lambda group, **kwargs: [{}])  # the data is checked before training
        with pytest.warns(UserWarning) as warned:
            train(config, tmp_path / "td3bc", dataset=data, progress=False)
    messages = " | ".join(str(w.message) for w in warned)
    assert "100 training transitions, fewer than one batch (256)" in messages
    assert "every reward of the training data is 0, so td3bc's critic learns nothing" in messages

    config = RunConfig(**{**RUN, "steps": 100, "sparsity": 0.999999})  # the shapes of the runs above: compiled
    with pytest.warns(UserWarning, match=r"sparsity 0.999999: the mask of step 0 keeps no weight of actor layer"):
        train(config, tmp_path / "bc", dataset=hopper_random, progress=False)


# ----------------------------------------------------------------------------- 7. first contact


def test_help_lists_the_set_keys_and_explains_its_terms(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    assert "Keys: bc: learning_rate, batch_size; td3bc: actor_learning_rate" in text
    assert "iql: actor_learning_rate" in text and "expectile, beta" in text
    assert "the paper's 'SFI' runs; runs with refreshes are its 'SPU', periodic updates" in text
    assert "every layer cut to the units its masks leave alive" in text
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "scan unroll" not in readme
    first_iqm = readme.index("IQM")
    assert "interquartile mean" in readme[first_iqm - 300:first_iqm + 300]


def test_an_export_without_flatbuffers_says_what_to_install(runs, tmp_path, capsys, monkeypatch):
    import jax

    code, err = cli(capsys, "export-policy", runs["finished"], "--out", tmp_path / "p.jaxexport")
    assert code == 0, err
    real_serialize = jax.export.Exported.serialize

    def without_flatbuffers(self, *args, **kwargs):  # what jax raises where flatbuffers is not installed
        raise ModuleNotFoundError("No module named 'flatbuffers'", name="flatbuffers")

    monkeypatch.setattr(jax.export.Exported, "serialize", without_flatbuffers)
    code, err = cli(capsys, "export-policy", runs["finished"], "--out", tmp_path / "q.jaxexport")
    one_line_error(code, err, "pip install flatbuffers")
    monkeypatch.setattr(jax.export.Exported, "serialize", real_serialize)
    main(["export-policy", str(runs["finished"]), "--out", str(tmp_path / "r.jaxexport")])
    assert "pip install jax flatbuffers" in capsys.readouterr().out


def test_an_unknown_set_key_lists_the_keys(tmp_path, capsys, hopper_random_npz):
    code, err = cli(capsys, "train", "--dataset", hopper_random_npz, *FLAGS, "--set", "betta=3", "--out", tmp_path / "r")
    one_line_error(code, err, "unknown option(s) ['betta'] for bc; known: ['batch_size', 'learning_rate']")


# ----------------------------------------------------------------------------- every file, every damage


def corrupt(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + b"\x00garbage\xff\xfe" + raw[middle + 11:]


FILE_DAMAGES = {"truncated": lambda raw: raw[: len(raw) // 2], "emptied": lambda raw: b"", "corrupted": corrupt}


def run_files(run: Path) -> set[str]:
    """The files of a run directory, TensorBoard's event files as one entry."""
    names = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    return {"tensorboard/" if name.startswith("tensorboard/") else name for name in names}


def test_the_damage_cases_cover_every_file_of_a_run_directory(runs):
    assert run_files(runs["interrupted"]) == {"config.json", "checkpoint.msgpack", "metrics.csv", "masks.csv",
                                              ".lock", "tensorboard/"}
    assert run_files(runs["finished"]) - run_files(runs["interrupted"]) == {"summary.json"}


@pytest.mark.parametrize("damage", list(FILE_DAMAGES))
@pytest.mark.parametrize("run, name", [
    ("interrupted", "config.json"), ("interrupted", "checkpoint.msgpack"), ("interrupted", "metrics.csv"),
    ("interrupted", "masks.csv"), ("interrupted", ".lock"), ("interrupted", "tensorboard/"),
    ("finished", "summary.json"),
])
def test_any_damaged_file_gets_one_line_and_resume_or_overwrite_finishes_the_run(
        runs, tmp_path, capsys, hopper_random_npz, run, name, damage):
    out = copy_of(runs, run, tmp_path)
    paths = sorted((out / name).glob("*")) if name.endswith("/") else [out / name]  # tensorboard: every file
    assert paths
    for path in paths:
        path.write_bytes(FILE_DAMAGES[damage](path.read_bytes()))
    code, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    if code != 0:
        one_line_error(code, err, "--overwrite")
        code, err = cli(capsys, "train", "--dataset", hopper_random_npz, *FLAGS, "--out", out, "--overwrite")
    assert code == 0, err
    assert_finished_like(out, runs["finished"])
