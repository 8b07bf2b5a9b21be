"""Named points where a crash test kills this process, to prove that a crash there loses and doubles nothing.

``CLOSEDLOOP_CRASH_AT=batch-committed`` (several names: comma-separated) makes the process SIGKILL itself the
first time it reaches that point, as an out-of-memory kill or a lost node would: no ``finally``, no flush. Unset
(always, outside crash tests) a point costs one dictionary lookup. The points, in the order a batch meets them:

- ``batch-writing``: one offline file of the batch is staged, others may not be;
- ``batch-staged``: everything of the batch is staged, its ledger record is not written;
- ``batch-committed``: the ledger record is written, nothing is moved into place;
- ``batch-publishing``: one staged object is moved into place, others are not;
- ``replay-committed``: a replay is committed and published, its quarantine record does not say so yet.
- ``batch-retracting``: a retraction is ledgered and one object of the batch is archived, others are not.
"""

from __future__ import annotations

import os
import signal

ENV = "CLOSEDLOOP_CRASH_AT"


def reach(point: str) -> None:
    """Die here when the environment asks for a crash at ``point``."""
    wanted = os.environ.get(ENV)
    if wanted and point in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
