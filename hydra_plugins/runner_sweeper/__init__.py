"""The runner's default sweeper: Hydra's basic sweeper, minus one composition per job.

Before launching a batch, Hydra's BasicSweeper composes every job's config once to see
that it composes, and the launcher then composes it again to run it: about 65 ms each
time with our config, the largest share of what an extra job of a sweep costs.
`python -m runner -m` has already composed or set every swept value and checked the
result before Hydra started (runner/checks.py: check_command_line), so the first of the
two compositions can go. Hydra finds this class because it lives in `hydra_plugins`.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class CheckedSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Checked already, value by value, before the sweep began."""
