"""Run a command and write its CPU seconds and peak RSS, as the kernel counted them,
to a JSON file:  python bench/measure.py OUT.json COMMAND...

Why a process of its own: a child's peak RSS (``ru_maxrss``) includes what it
inherited from its parent at fork, so a child of the benchmark (which holds the
simulator and its workload) would report the benchmark's memory, not its own.  This
launcher is small, so what its child reports is the child's."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main() -> int:
    out, command = sys.argv[1], sys.argv[2:]
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "cpu": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "returncode": code,
            },
            handle,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
