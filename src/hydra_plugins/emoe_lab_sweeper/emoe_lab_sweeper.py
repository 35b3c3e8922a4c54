"""Hydra sweeper that runs the dense baseline once per seed and keeps going past failed cells.

It is Hydra's basic sweeper with two changes. Cells with `moe=dense` lose their
clusterer, gating and moe.* overrides and are de-duplicated, so the baseline is not
repeated for every clusterer x gating pair. A failed cell no longer stops the sweep: the
other cells run, and the multirun exits with status 1 and a list of the failed cells.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from emoe_lab.sweeper import (
    expand_sweep,
    inspect_job,
    register_sweeper,
    report_outcomes,
    split_into_batches,
)

log = logging.getLogger(__name__)

register_sweeper()


class EmoeLabSweeper(BasicSweeper):
    """Basic sweeper plus dense de-duplication and a non-zero exit on failed cells."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        assert self.launcher is not None
        assert self.hydra_context is not None

        default_moe = str(OmegaConf.select(self.config, "moe.name", default=""))
        cells, product_size = expand_sweep(
            self._parse_config() + list(arguments), self.hydra_context.config_loader, default_moe
        )
        log.info(
            "Sweep of %d cells: the cartesian product has %d, and moe=dense cells are kept "
            "once per combination of their other overrides",
            len(cells),
            product_size,
        )
        self.overrides = split_into_batches(cells, self.max_batch_size)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[list[JobReturn]] = []
        outcomes = []
        first_job_index = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = list(self.launcher.launch(batch, initial_job_idx=first_job_index))
            first_job_index += len(batch)
            returns.append(results)

            batch_outcomes = [inspect_job(job) for job in results]
            failed = sum(not outcome.completed for outcome in batch_outcomes)
            log.info("Batch of %d cells done, %d did not complete", len(batch), failed)
            outcomes += batch_outcomes

        report_outcomes(outcomes, str(sweep_dir))
        return returns
