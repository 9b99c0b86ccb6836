"""The RL evidence script stays runnable: its --smoke mode (every task and variant, 1 seed, one
short rollout per interval; seconds on one core) runs in CI and writes its section."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def test_smoke_run_writes_its_section_and_keeps_the_rest_of_the_file(tmp_path: Path):
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("rl_zoo3")
    output = tmp_path / "results.md"
    heading = "## Reinforcement learning with Stable-Baselines3 (against rl-zoo)"
    output.write_text(f"# Results\n\nearlier\n\n{heading}\n\nstale figures\n\n## next\n\nkept\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "rl_zoo.py"), "--smoke"]
    run = subprocess.run(
        [*command, "--output", str(output)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = output.read_text()
    # the section is replaced in place; the rest of the file is kept
    assert text.startswith(f"# Results\n\nearlier\n\n{heading}\n")
    assert text.count(heading) == 1 and "stale figures" not in text
    assert text.endswith("\n## next\n\nkept\n")
    for env_id in ("CartPole-v1", "Acrobot-v1", "Pendulum-v1"):
        assert f"### {env_id} (PPO;" in text
    for variant in ("rl-zoo (tuned)", "random search", "PBT"):
        assert text.count(f"| {variant} | ") == 3
    assert text.count("- **PBT** ") == 6  # against random search and rl-zoo, per task
    assert text.count("- Cost besides training, PBT runs") == 3
    assert "read from the installed `rl_zoo3` package" in text
    assert "**Against the targets.**" in text and "**Overhead** (PPO on CartPole" in text
    # the lines it printed are enough to write the same section again (--from-log)
    log = tmp_path / "run.log"
    log.write_text(run.stdout)
    again = tmp_path / "again.md"
    rewrite = [*command, "--from-log", str(log), "--output", str(again)]
    subprocess.run(rewrite, capture_output=True, text=True, timeout=120, check=True)
    assert again.read_text().strip() == text[text.index(heading) : text.index("## next")].strip()


def test_overhead_only_prints_the_costs_of_cartpoles_pbt_run_and_writes_nothing(tmp_path: Path):
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("rl_zoo3")
    output = tmp_path / "results.md"
    command = [sys.executable, str(ROOT / "benchmarks" / "rl_zoo.py"), "--smoke"]
    run = subprocess.run(
        [*command, "--overhead-only", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    shares = r"evaluate (\d+\.\d\d)%  report\+exploit (\d+\.\d\d)%  together (\d+\.\d\d)%"
    line = re.fullmatch(
        rf"CartPole-v1 PBT seed 0: wall \d+\.\ds  {shares}  \(per member and interval: "
        r"training \d+\.\d\ds, evaluation \d+ms\)",
        run.stdout.strip(),
    )
    assert line is not None, run.stdout
    evaluate, rest, together = (float(x) for x in line.groups())
    assert evaluate > 0 and abs(evaluate + rest - together) <= 0.02
    assert not output.exists()
