"""The decisions module reads the population as it likes but writes only the copy itself.

Which storage calls are writes is read from the source, not listed here: every public method of
``Storage`` (storage/_base.py) that the SQL backend runs in a write transaction
(``self._write()``), or that a default on the base builds on such a method.
"""

from __future__ import annotations

import ast
from pathlib import Path

import poptune.decisions
import poptune.storage._base
import poptune.storage._sql
from poptune.decisions import Decider
from poptune.records import CopyReason
from tests._helpers import ckpt, train


def _class(path: Path, name: str) -> ast.ClassDef:
    tree = ast.parse(path.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}


def _self_calls(function: ast.AST) -> set[str]:
    """The names of the ``self.<name>(...)`` calls in ``function``."""
    return {
        node.func.attr
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
    }


def _write_methods() -> set[str]:
    base = _methods(_class(Path(poptune.storage._base.__file__), "Storage"))
    sql = _methods(_class(Path(poptune.storage._sql.__file__), "SQLStorage"))
    public = {name for name in base if not name.startswith("_")}
    writes = {name for name in public if name in sql and "_write" in _self_calls(sql[name])}
    while True:  # a default on the base that calls a write is a write
        more = {
            name for name in public - writes if name not in sql and _self_calls(base[name]) & writes
        }
        if not more:
            return writes
        writes |= more


def _calls(path: Path) -> set[str]:
    """The method names of every ``<anything>.<name>(...)`` call in the module at ``path``."""
    return {
        node.func.attr
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }


def test_the_write_methods_are_read_from_the_storage_source():
    writes = _write_methods()
    assert {"record_exploit", "record_interval", "record_failure", "set_status"} <= writes
    assert {"collect_garbage", "discard_checkpoint", "claim", "release"} <= writes
    assert not {"members", "interval", "intervals", "candidates", "peer", "summary"} & writes


def test_the_only_storage_write_of_the_decisions_is_record_exploit():
    # Any call named like a write counts, whatever it is called on (an alias of the storage
    # too); the decisions must still make the one write they exist for.
    called = _calls(Path(poptune.decisions.__file__))
    assert called & _write_methods() == {"record_exploit"}


def test_a_member_whose_donor_is_damaged_falls_back_on_its_own_checkpoint_at_its_step(quick_run):
    # Simulation seed 4135: member 0 copied member 1 at step 1, whose checkpoint was then found
    # corrupt. Its own checkpoint at step 1 was intact, but the fallback skipped the member
    # itself, found nothing, and the member failed three times and ended failed, short of the
    # budget, without its code ever raising.
    runner = quick_run.created(population=2, intervals=4)
    storage, pid = runner.storage, runner.target.population_id
    assert train(storage, pid, 1.0, budget=4) == (0, 1)
    assert train(storage, pid, 2.0, budget=4) == (1, 1)
    storage.discard_checkpoint(pid, ckpt(1, 1))  # the donor's file failed its checksum
    claim = storage.claim(pid, "w", 4, 30.0, sync=False)
    assert claim is not None and claim.member.id == 0
    decider = Decider(runner.target.spec, storage, pid)
    fallback = decider.fallback(claim, claim.member, damaged=(1, 1))
    assert fallback is not None
    member, ref = fallback
    assert (ref.member, ref.step) == (0, 1) and member.step == 1
    assert [e.reason for e in storage.exploits(pid)] == [CopyReason.FALLBACK]
