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
