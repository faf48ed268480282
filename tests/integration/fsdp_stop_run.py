"""``python -m tests.integration.fsdp_stop_run STEP [key=value ...]``: ``specforge.train`` stopped on
every process by an exception as optimizer step STEP is logged, the way ``test_resume_is_exact``
stops a one-process run (a crash after the last checkpoint). Run it under ``accelerate launch``."""

from __future__ import annotations

import sys

from accelerate import Accelerator

from specforge.train.__main__ import main


class Stopped(Exception):
    pass


def run(argv: list[str]) -> int:
    stop, real_log = int(argv[0]), Accelerator.log

    def log(self, values, step=None, log_kwargs=None):
        if step == stop:
            raise Stopped(f"stopped as step {stop} was logged")
        return real_log(self, values, step=step, log_kwargs=log_kwargs or {})

    Accelerator.log = log
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
