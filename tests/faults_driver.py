"""Runs ``msflow ARGS...`` with one fault injected; used by test_faults.py in a subprocess.

    python faults_driver.py FAULT AT msflow-args...

FAULT and AT choose what happens (the process SIGKILLs itself, as a power cut or the OOM
killer would, so no Python clean-up runs):

- ``step``: after training step AT has finished, before the next one starts;
- ``checkpoint``: halfway through writing the checkpoint of step AT (half the bytes on disk);
- ``metrics``: halfway through writing the metrics line of step AT;
- ``replace``: just before the AT-th atomic rename of the run (checkpoints, grids, logs);
- ``eval``: in the middle of the AT-th evaluation on the test set;
- ``timer``: AT milliseconds after the first training step starts, wherever it is then (or
  after step ``$FAULT_LATEST_STEP`` at the latest);
- ``enospc``: the checkpoint write of step AT fails with "No space left on device" after
  writing half the file (the process is not killed: training must go on).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
from pathlib import Path

import msflow._io as io
import msflow.train.checkpoint as checkpoint
import msflow.train.loop as loop
import msflow.train.metrics_log as metrics_log
from msflow.cli import main


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str, at: int) -> None:
    """Patch the one place where ``fault`` strikes."""
    if fault == "step":
        real_lr = loop.learning_rate
        loop.learning_rate = lambda cfg, step: die() if step == at else real_lr(cfg, step)
    elif fault in ("checkpoint", "enospc"):
        real_save = checkpoint.save_file

        def save_file(tensors, filename, metadata=None):  # noqa: ANN001, ANN202
            real_save(tensors, filename, metadata=metadata)
            if json.loads(metadata["meta"])["step"] == at:
                data = Path(filename).read_bytes()
                Path(filename).write_bytes(data[: len(data) // 2])
                if fault == "checkpoint":
                    die()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

        checkpoint.save_file = save_file
    elif fault == "metrics":
        real_write = metrics_log.MetricsLog.write

        def write(self, record):  # noqa: ANN001, ANN202
            if record.get("step") == at:
                line = json.dumps(record)
                with open(self.path, "a") as f:
                    f.write(line[: len(line) // 2])
                die()
            real_write(self, record)

        metrics_log.MetricsLog.write = write
    elif fault == "replace":
        real_replace, count = io.os.replace, [0]

        def replace(src, dst):  # noqa: ANN001, ANN202
            count[0] += 1
            if count[0] == at:
                die()
            real_replace(src, dst)

        io.os.replace = replace
    elif fault == "eval":
        real_bpd, count = loop.evaluate.__globals__["dataset_bits_per_dim"], [0]

        def dataset_bits_per_dim(model, dataset, *args, **kwargs):  # noqa: ANN001, ANN202
            count[0] += 1
            if count[0] == at:
                model.bits_per_dim(dataset.images[:8])  # some work done, then the lights go out
                die()
            return real_bpd(model, dataset, *args, **kwargs)

        loop.evaluate.__globals__["dataset_bits_per_dim"] = dataset_bits_per_dim
    elif fault == "timer":
        real_lr, timer = loop.learning_rate, threading.Timer(at / 1000, die)

        latest = int(os.environ.get("FAULT_LATEST_STEP", "0"))

        def learning_rate(cfg, step):  # noqa: ANN001, ANN202
            if not timer.is_alive() and not timer.finished.is_set():
                timer.start()  # from the first training step on: wherever it is then
            if step == latest:  # on a fast machine the timer may come late: never let the run finish
                die()
            return real_lr(cfg, step)

        loop.learning_rate = learning_rate
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    code = main(sys.argv[3:])
    os._exit(code)  # no waiting for a pending timer thread
