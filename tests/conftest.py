"""Suite-wide setting: every training a test starts uses one torch thread.

pytest -n 2 runs two workers on a 2-core machine; an automatic thread count (moh/threads.py)
would give each training every core, and oversubscribed cores were measured 6-12x slower.
OMP_NUM_THREADS reaches the trainings started in-process and the `moh train` subprocesses alike;
a value already set by the caller is kept."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
