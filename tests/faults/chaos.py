"""A worker process that injects faults, for the fault-injection harness (``test_chaos.py``).

Run as ``python chaos.py STORAGE_URL NAME`` with ``$POPTUNE_CHAOS_SEED`` set. It joins the
population like any worker, but with probabilities taken from ``$POPTUNE_CHAOS`` (JSON) it

- SIGKILLs itself during ``train``, half-way through writing a checkpoint, or inside a database
  write transaction before it commits (what "killed during the commit" looks like to SQLite);
- raises from ``train`` and returns NaN from ``evaluate``.

The trainable signs its own state, so if poptune ever handed it damaged data (a checkpoint whose
checksum failed silently), ``load_state_dict`` would raise ``CORRUPT STATE`` and the harness
would find it among the recorded failures.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from poptune.checkpoints import LocalCheckpoints
from poptune.population import load
from poptune.storage import SQLStorage
from poptune.testing import Quadratic
from poptune.worker import RunSpec, Worker

CHAOS: dict[str, float] = json.loads(os.environ.get("POPTUNE_CHAOS", "{}"))
RNG = np.random.default_rng(int(os.environ.get("POPTUNE_CHAOS_SEED", "0")))


def maybe_die(kind: str) -> None:
    """SIGKILL this process with probability ``CHAOS[kind]``."""
    if RNG.random() < CHAOS.get(kind, 0.0):
        os.kill(os.getpid(), signal.SIGKILL)


def signature(theta: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(theta).tobytes()).hexdigest()


class Chaotic(Quadratic):
    """The toy problem, with injected kills, exceptions and NaN scores."""

    def train(self, hparams: Mapping[str, Any]) -> None:
        maybe_die("kill_train")
        if RNG.random() < CHAOS.get("raise", 0.0):
            raise RuntimeError("injected failure in train")
        super().train(hparams)

    def evaluate(self) -> dict[str, float]:
        result = super().evaluate()
        if RNG.random() < CHAOS.get("nan", 0.0):
            result["q"] = float("nan")
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.copy(), "signature": signature(self.theta)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if signature(np.asarray(state["theta"])) != state["signature"]:
            raise RuntimeError("CORRUPT STATE reached the trainable")
        super().load_state_dict(state)


class ChaosCheckpoints(LocalCheckpoints):
    """Dies half-way through writing a checkpoint."""

    def _write(self, temporary: Any, encoded: Any, direct: bool) -> str:
        if RNG.random() < CHAOS.get("kill_write", 0.0):
            with open(temporary, "wb") as file:
                file.write(b"POPTUNE\x00CKPT half a file")
                file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._write(temporary, encoded, direct)


AUDIT = os.environ.get("POPTUNE_AUDIT")


def audit(event: str, claim: Any) -> None:
    """Append "event member token monotonic-time" to $POPTUNE_AUDIT (one file per worker)."""
    if AUDIT and claim is not None:
        with open(AUDIT, "a") as file:
            file.write(f"{event} {claim.member.id} {claim.token} {time.monotonic()}\n")


class ChaosStorage(SQLStorage):
    """Dies inside a write transaction, after its statements and before its commit; with
    ``$POPTUNE_AUDIT`` it logs when each claim starts and ends, to check exclusivity."""

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with super()._write() as connection:
            yield connection
            maybe_die("kill_commit")

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        claim = super().claim(*args, **kwargs)
        audit("claim", claim)
        return claim

    def record_interval(self, claim: Any, *args: Any, **kwargs: Any) -> Any:
        audit("end", claim)  # logged before the release commits: a conservative end time
        return super().record_interval(claim, *args, **kwargs)

    def release(self, claim: Any) -> None:
        audit("end", claim)
        super().release(claim)

    def record_failure(self, claim: Any, *args: Any, **kwargs: Any) -> Any:
        audit("end", claim)
        return super().record_failure(claim, *args, **kwargs)


def main() -> None:
    url, name = sys.argv[1], sys.argv[2]
    result = load(url, name)
    storage = ChaosStorage(url)
    store = ChaosCheckpoints(result.checkpoint_store.url)
    spec = RunSpec.build(result.config, Chaotic)
    worker = Worker(
        spec,
        storage,
        store,
        result.record.id,
        lease_seconds=result.config.lease_seconds,
        poll_seconds=0.01,
    )
    worker.run()


if __name__ == "__main__":
    main()
