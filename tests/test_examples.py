"""The examples in examples/ run as a user would run them, on a tiny budget, and do what they say.

Each is a user's own agent (Flax + optax, or PyTorch) with Sparse-Reg added through the public
API in at most six marked lines: the run must finish, mask the fraction of weights it was asked
to, and lower its losses. The PyTorch ones are skipped without torch (the ``torch`` extra).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
TINY = ["--steps", "60", "--size", "1000"]


def run_example(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *TINY, *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def loss_change(output: str, label: str) -> tuple[float, float]:
    match = re.search(rf"^{label} \(mean of 10 steps\) ([\d.]+) -> ([\d.]+)", output, re.MULTILINE)
    assert match, output
    return float(match.group(1)), float(match.group(2))


def test_bc_example_masks_95_percent_and_learns():
    output = run_example("bc_flax.py")
    assert "step      0: masks refreshed, 95.0% of weights masked" in output
    # 11·256 + 256·256 + 256·3 = 69120 weight entries, round(0.05 · 69120) = 3456 kept.
    assert "policy: 95.0% of weights masked (3456 of 69120 weight entries kept; biases dense)" in output
    first, last = loss_change(output, "loss")
    assert last < 0.7 * first, output


def test_bc_example_dense_baseline_masks_nothing():
    output = run_example("bc_flax.py", "--sparsity", "0")
    assert "masks refreshed" not in output
    assert "policy: 0.0% of weights masked (69120 of 69120 weight entries kept" in output
    first, last = loss_change(output, "loss")
    assert last < first, output


def test_iql_example_masks_every_network_and_learns():
    output = run_example("iql_flax.py")
    assert re.search(r"step      0: masks refreshed, masked actor 95\.0% .*critic 95\.0% .*value 95\.0%", output), output
    assert "masked: actor 95.0% of weights, critic 95.0% of weights, value 95.0% of weights" in output
    # The TD and expectile losses fall; the actor's advantage-weighted loss need not in 60 steps (its
    # weights move with the critic), but its mean action comes closer to the data's.
    for network in ("critic", "value"):
        first, last = loss_change(output, f"{network} loss")
        assert last < first, (network, output)
    match = re.search(r"^actor's action MSE on the data ([\d.]+) -> ([\d.]+)", output, re.MULTILINE)
    assert match and float(match.group(2)) < float(match.group(1)), output
    assert re.search(r"policy return over 20 episodes -?[\d.]+ \(behaviour data: -?[\d.]+\)", output), output


def needs(module: str):
    import importlib.util

    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"needs {module}")


EXAMPLE_FILES = [pytest.param("bc_flax.py"), pytest.param("iql_flax.py"),
                 pytest.param("iql_torch.py", marks=needs("torch")),
                 pytest.param("d3rlpy_iql.py", marks=[needs("torch"), needs("d3rlpy")])]


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_examples_say_what_they_are(name):
    result = subprocess.run([sys.executable, str(EXAMPLES / name), "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "Sparse-Reg" in result.stdout and "--steps" in result.stdout


@pytest.mark.parametrize("name, most", [("bc_flax.py", 6), ("iql_flax.py", 6), ("iql_torch.py", 6),
                                        ("d3rlpy_iql.py", 8)])  # d3rlpy: its losses and batches are inside algo.impl
def test_examples_add_sparse_reg_in_at_most_six_marked_lines(name, most):
    marks = re.findall(r"# Sparse-Reg \((\d+)/(\d+)\)", (EXAMPLES / name).read_text())
    total = int(marks[0][1])
    assert marks == [(str(i), str(total)) for i in range(1, total + 1)], marks  # 1/N ... N/N, in file order
    assert total <= most


@needs("torch")
@needs("d3rlpy")
def test_d3rlpy_iql_example_masks_every_network_and_learns():
    output = run_example("d3rlpy_iql.py", "--threads", "1")
    assert re.search(r"step      0: masks refreshed, masked actor 95\.0% .*critic 95\.0% .*value 95\.0%", output), output
    assert "masked: actor 95.0% of weights, critic 95.0% of weights, value 95.0% of weights" in output
    first, last = loss_change(output, "critic_loss")
    assert last < first, output


@needs("torch")
def test_iql_torch_example_masks_every_network_and_learns():
    output = run_example("iql_torch.py", "--threads", "1")
    assert re.search(r"step      0: masks refreshed, masked actor 95\.0% .*critic 95\.0% .*value 95\.0%", output), output
    assert "masked: actor 95.0% of weights, critic 95.0% of weights, value 95.0% of weights" in output
    for network in ("critic", "value"):
        first, last = loss_change(output, f"{network} loss")
        assert last < first, (network, output)
    match = re.search(r"^actor's action MSE on the data ([\d.]+) -> ([\d.]+)", output, re.MULTILINE)
    assert match and float(match.group(2)) < float(match.group(1)), output
    assert re.search(r"policy return over 20 episodes -?[\d.]+ \(behaviour data: -?[\d.]+\)", output), output


@needs("torch")
def test_iql_torch_example_resumes_to_the_same_masks(tmp_path):
    import torch

    schedule = ["--threads", "1", "--mask-interval", "10", "--mask-until", "50"]  # refreshes at 0, 10, ..., 40
    straight, half, resumed = tmp_path / "straight.pt", tmp_path / "half.pt", tmp_path / "resumed.pt"
    run_example("iql_torch.py", *schedule, "--save", str(straight))  # 60 steps
    run_example("iql_torch.py", *schedule, "--save", str(half), "--steps", "25")  # (argparse: the last --steps wins)
    output = run_example("iql_torch.py", *schedule, "--resume", str(half), "--save", str(resumed))
    assert "resumed from" in output and "step     30: masks refreshed" in output and "step     40: masks refreshed" in output
    a, b = torch.load(straight)["agent"], torch.load(resumed)["agent"]
    masks = 0
    for net in ("actor", "critic", "critic_target", "value"):
        for key in a[net]:
            if key.endswith(".mask"):
                assert torch.equal(a[net][key], b[net][key]), (net, key)
                masks += 1
    assert masks == 3 + 6 + 6 + 3


def readme_snippet(heading: str) -> str:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Sparse-Reg in your agent", 1)[1].split("\n## ", 1)[0]
    snippet = section.split(heading, 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert [n for n in range(1, 10) if f"# {n}." in snippet] == [1, 2, 3, 4, 5]  # the five marked lines
    assert "range(20_000)" in snippet  # the test follows the README
    return snippet.replace("range(20_000)", "range(3)")


def test_the_readme_jax_snippet_runs_and_freezes_pruned_weights():
    import jax
    import numpy as np

    import sparse_reg as sr

    namespace: dict = {}
    exec(compile(readme_snippet("### JAX"), "README.md", "exec"), namespace)  # every name defined
    state, params, sparse = namespace["state"], namespace["params"], namespace["sparse"]
    assert sr.weight_sparsity(state) == pytest.approx(0.95, abs=1e-4)
    assert sparse.weight_sparsity(state) == {None: pytest.approx(0.95, abs=1e-4)}
    masks = sr.get_masks(state.opt_state)
    for before, after, mask in zip(*(jax.tree_util.tree_leaves(t) for t in (params, state.params, masks))):
        before, after, mask = np.asarray(before), np.asarray(after), np.asarray(mask)
        np.testing.assert_array_equal(after[mask == 0], before[mask == 0])  # frozen, not zeroed
        assert np.any(after[mask == 1] != before[mask == 1])


@needs("torch")
def test_the_readme_torch_snippet_runs_and_freezes_pruned_weights():
    import torch

    snippet = readme_snippet("### PyTorch")
    before, after = snippet.split("for step in range(3):", 1)
    namespace: dict = {}
    exec(compile(before, "README.md", "exec"), namespace)
    stored = {name: [p.detach().clone() for n, p in namespace[name].named_parameters() if n.endswith("original")]
              for name in ("actor", "critic")}
    exec(compile("for step in range(3):" + after, "README.md", "exec"), namespace)
    sparse = namespace["sparse"]
    assert sparse.weight_sparsity() == {"actor": pytest.approx(0.95, abs=1e-3), "critic": pytest.approx(0.95, abs=1e-3)}
    for name in ("actor", "critic"):
        now = [p for n, p in namespace[name].named_parameters() if n.endswith("original")]
        for old, new, mask in zip(stored[name], now, sparse.masks()[name].values()):
            assert torch.equal(new[mask == 0], old[mask == 0])  # frozen, not zeroed (Adam, AdamW)
            assert torch.any(new[mask == 1] != old[mask == 1])
    target = namespace["critic_target"]
    for layer, mask in zip([m for m in target.modules() if isinstance(m, torch.nn.Linear)],
                           sparse.masks()["critic"].values()):
        assert torch.all(layer.weight[mask == 0] == 0)  # the target runs with the online mask
