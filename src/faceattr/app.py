"""The Hydra application: one config tree, one entry, a dispatch on ``cfg.command``.

Each command's work lives in its own module and is imported only when used, so ``run``
doesn't pay for training code and ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from faceattr.cli import CONF_DIR, _register_resolvers
from faceattr.errors import FaceAttrError

log = logging.getLogger("faceattr")

#: command -> "module:function"; each function takes (cfg, run_dir) and returns a dict or None.
HANDLERS = {
    "run": "faceattr.inference.run:run_command",
    "train": "faceattr.training:train_command",
    "evaluate": "faceattr.evaluation.report:evaluate_command",
    "stats": "faceattr.data.stats:stats_command",
    "compare": "faceattr.evaluation.sweep:compare_command",
    "promote": "faceattr.models.io:promote_command",
    "export": "faceattr.models.export:export_command",
    "ensemble": "faceattr.models.ensemble:ensemble_command",
    "calibrate": "faceattr.evaluation.calibrate:calibrate_command",
}

_register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_entry(cfg: DictConfig) -> float | None:
    """Run ``cfg.command`` in the Hydra run (or sweep job) directory."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    module_name, func_name = HANDLERS[cfg.command].split(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        result = handler(cfg, run_dir)
    except FaceAttrError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        if hc.mode == RunMode.MULTIRUN:
            return None  # one failed job of a sweep is reported; the others go on
        sys.exit(exc.exit_code)
    print(f"Results written to {run_dir}")
    # A number lets optimising sweepers (e.g. Optuna) minimise validation/test loss.
    if isinstance(result, dict) and isinstance(result.get("objective"), float):
        return result["objective"]
    return None
