"""`python tests/sigkill_at.py N SCRIPT ARGS...`: runs SCRIPT, which SIGKILLs itself at its N-th atomic rename
(`os.replace`, through which every file of a run is written: each checkpoint, metrics.csv, the plot, the adapter,
prompt_style.json, lora_config.json): the file is complete under its temporary name, not yet in place. N = 0 never
kills; the number of renames goes to stderr at exit, as `renames: N`."""

import atexit
import os
import runpy
import signal
import sys

kill_at, calls = int(sys.argv[1]), 0
real_replace = os.replace


def replace(src, dst, **kwargs):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, **kwargs)


os.replace = replace
atexit.register(lambda: print(f"renames: {calls}", file=sys.stderr))
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
