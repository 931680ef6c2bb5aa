"""The examples in examples/ run as a user would run them, on a tiny budget, and do what they say.

Each is a user's own Flax + optax agent with Sparse-Reg added through the public API: the
run must finish, mask the fraction of weights it was asked to, and lower its losses.
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


@pytest.mark.parametrize("name", ["bc_flax.py", "iql_flax.py"])
def test_examples_say_what_they_are(name):
    result = subprocess.run([sys.executable, str(EXAMPLES / name), "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "Sparse-Reg" in result.stdout and "--steps" in result.stdout


def test_the_readme_own_agent_snippet_runs_and_freezes_pruned_weights():
    import jax
    import numpy as np

    import sparse_reg as sr

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = readme.split("## Sparse-Reg in your own agent", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert snippet.count("# 1.") == snippet.count("# 5.") == 1  # the five marked lines
    assert "range(20_000)" in snippet  # the test follows the README
    namespace: dict = {}
    exec(compile(snippet.replace("range(20_000)", "range(3)"), "README.md", "exec"), namespace)  # every name defined
    state, params = namespace["state"], namespace["params"]
    assert sr.weight_sparsity(state) == pytest.approx(0.95, abs=1e-4)
    masks = sr.get_masks(state.opt_state)
    for before, after, mask in zip(*(jax.tree_util.tree_leaves(t) for t in (params, state.params, masks))):
        before, after, mask = np.asarray(before), np.asarray(after), np.asarray(mask)
        np.testing.assert_array_equal(after[mask == 0], before[mask == 0])  # frozen, not zeroed
        assert np.any(after[mask == 1] != before[mask == 1])
