"""Import references: how joining workers and `poptune resume` find user code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import poptune as pt
from poptune._imports import import_object, reference_of
from poptune.testing import Quadratic


def test_module_reference_round_trip():
    assert reference_of(Quadratic) == "poptune.testing:Quadratic"
    assert import_object("poptune.testing:Quadratic") is Quadratic
    assert reference_of(lambda: None) is None


def test_script_classes_are_referenced_by_path(tmp_path: Path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            from poptune.testing import Quadratic
            class Mine(Quadratic):
                pass
            if __name__ == "__main__":
                from poptune._imports import reference_of
                print(reference_of(Mine))
                raise SystemExit("the main block must not run on import")
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    reference = out.stdout.strip()
    assert reference == f"{script.resolve()}:Mine"
    cls = import_object(reference)
    assert cls.__name__ == "Mine" and issubclass(cls, Quadratic)


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        ("no_such_module_xyz:Thing", "no_such_module_xyz:Thing.*PYTHONPATH"),
        ("poptune.testing:Nope", "has no attribute 'Nope'"),
        ("/nonexistent/file.py:X", "no such file"),
        ("no-colon", "expected 'package.module:QualName'"),
    ],
)
def test_bad_references_explain_themselves(reference, match):
    with pytest.raises(ImportError, match=match):
        import_object(reference)


def test_resume_with_an_unimportable_trainable_says_so(storage_url, tmp_path: Path, quick_run):
    script = tmp_path / "gone.py"
    script.write_text("from poptune.testing import Quadratic\nclass Gone(Quadratic):\n    pass\n")
    cls = import_object(f"{script}:Gone")
    space = {"h0": 0.5, "h1": pt.Uniform(0, 1)}
    quick_run(cls, space=space, storage=storage_url, name="gone", population=2, intervals=1)
    script.unlink()
    out = subprocess.run(
        [sys.executable, "-m", "poptune.cli", "resume", "gone", "--storage", storage_url],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "Cannot import" in out.stderr and "gone.py" in out.stderr


def test_poptune_resume_finds_a_trainable_next_to_the_training_script(tmp_path: Path):
    """``train.py`` imports its trainable from ``model.py`` beside it, recorded as
    ``model:Net``: the ``poptune`` command, which unlike ``python`` does not search the folder
    it runs in, resumes it there (it said "No module named 'model'"), on two worker
    processes too; elsewhere it says which folder to run from."""
    (tmp_path / "model.py").write_text(
        "from poptune.testing import Quadratic\n\nclass Net(Quadratic):\n    pass\n"
    )
    (tmp_path / "train.py").write_text(
        textwrap.dedent(
            """
            import poptune as pt
            from poptune.testing import quadratic_space
            from model import Net

            if __name__ == "__main__":
                pt.run(Net, space=quadratic_space(), metric="q", population=2, intervals=1,
                       name="beside", storage="sqlite:///p.db", progress=False, seed=0)
            """
        )
    )
    subprocess.run([sys.executable, "train.py"], cwd=tmp_path, check=True, capture_output=True)
    assert pt.load(f"sqlite:///{tmp_path / 'p.db'}", "beside").config.trainable == "model:Net"
    command = Path(sys.executable).parent / "poptune"  # the console script, as users run it
    resume = [str(command), "resume", "beside", "--storage", "sqlite:///p.db", "--no-progress"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = subprocess.run(
        [*resume[:4], f"sqlite:///{tmp_path / 'p.db'}", "--no-progress"],
        cwd=elsewhere, capture_output=True, text=True,
    )  # fmt: skip
    assert lost.returncode == 1 and "Run this from the folder that holds 'model'" in lost.stderr
    done = subprocess.run(
        [*resume, "--intervals", "3", "--workers", "2"], cwd=tmp_path, capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pt.load(f"sqlite:///{tmp_path / 'p.db'}", "beside").status == "finished"


def test_a_script_importing_its_neighbour_inside_training_resumes_from_anywhere(
    tmp_path: Path,
):
    """A trainable defined in ``train.py`` that imports ``model`` when it starts training
    (inside its function, as Ray users write it) failed under ``poptune resume``: the script's
    folder was on the path only while the script was imported."""
    (tmp_path / "model.py").write_text(
        "from poptune.testing import Quadratic\n\nclass Net(Quadratic):\n    pass\n"
    )
    (tmp_path / "train.py").write_text(
        textwrap.dedent(
            """
            import poptune as pt
            from poptune.testing import quadratic_space

            def train(ctx):
                from model import Net  # imported when training starts
                net = Net(ctx.hparams, ctx.seed)
                for interval in ctx.intervals():
                    if interval.state is not None:
                        net.load_state_dict(interval.state)
                    net.train(interval.hparams)
                    interval.report(net.evaluate(), state=net.state_dict())

            if __name__ == "__main__":
                pt.run(train, space=quadratic_space(), metric="q", population=2, intervals=1,
                       name="lazy", storage="sqlite:///p.db", progress=False, seed=0)
            """
        )
    )
    subprocess.run([sys.executable, "train.py"], cwd=tmp_path, check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = Path(sys.executable).parent / "poptune"
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    done = subprocess.run(
        [str(command), "resume", "lazy", "--storage", storage, "--intervals", "3", "--workers",
         "2", "--no-progress"],
        cwd=elsewhere, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pt.load(storage, "lazy").status == "finished"
