"""A sweep whose jobs run in processes of their own (Hydra's joblib launcher, submitit's local
executor): SIGTERM to facediff-train or facediff-evaluate reaches them too."""

from __future__ import annotations

import logging
import signal

from hydra.experimental.callback import Callback

log = logging.getLogger("facediff.sweep")
IN_PROCESS = "BasicLauncher"  # Hydra's default launcher runs the jobs in this process


class ForwardSigterm(Callback):
    """SIGTERM to the sweep's process (a scheduler's, `kill PID`) is passed on to its worker
    processes, which the launcher started outside the signal's reach: each facediff-train job
    then writes its last checkpoint and stops, as a job run in-process does, instead of training
    on unseen into the sweep folder, and the jobs still queued do not start. A second SIGTERM
    ends this process at once. Registered in conf/train.yaml and conf/evaluate.yaml; it acts
    only where a launcher runs the jobs elsewhere (in-process jobs have Lightning's handler)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        target = str(config.hydra.launcher.get("_target_", ""))
        if target.endswith(IN_PROCESS) or not hasattr(signal, "SIGTERM"):
            return
        import psutil

        def forward(signum, frame):
            workers = psutil.Process().children()  # not their own children (data loaders)
            for worker in workers:
                try:
                    worker.send_signal(signal.SIGTERM)
                except psutil.Error:  # already gone
                    pass
            log.warning("SIGTERM: passed on to %d worker process(es)", len(workers))
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one acts at once

        self._previous = signal.signal(signal.SIGTERM, forward)

    def on_multirun_end(self, config, **kwargs) -> None:
        if hasattr(self, "_previous"):
            signal.signal(signal.SIGTERM, self._previous)
