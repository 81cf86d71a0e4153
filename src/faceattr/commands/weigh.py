"""``python src/main.py weigh EVAL_DIR EVAL_DIR [...]``: per-task ensemble weights from the members'
saved validation predictions."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from faceattr.commands.spec import Command, usage_error
from faceattr.overrides import quote, quote_list


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--reference``, ``--hold``, ``--baseline``, ``--step`` and ``--race-metric``."""
    parser.add_argument("--reference", metavar="W,W,...",
                        help="weights, one per member, the choice must not fall below on the held sources "
                             "(default: equal) (weigh.reference=[...])")
    parser.add_argument("--hold", metavar="SOURCE,...",
                        help="sources whose figures may not get worse than the reference's, e.g. utkface "
                             "(weigh.hold=[...])")
    parser.add_argument("--baseline", metavar="EVAL_DIR",
                        help="another model's `evaluate` run folder on the same faces (e.g. the shipped model's): "
                             "the held sources keep its figures instead of the reference's (weigh.baseline=...)")
    parser.add_argument("--step", type=float, metavar="STEP", help="the weight grid's step (weigh.step=0.05)")
    parser.add_argument("--race-metric", choices=("accuracy", "balanced"),
                        help="judge race by plain or balanced accuracy (weigh.race_metric=accuracy)")


def to_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """``weigh.evals=[...]`` (two or more folders), and ``weigh.reference``, ``weigh.hold``,
    ``weigh.baseline``, ``weigh.step``, ``weigh.race_metric`` for the flags given."""
    if len(positional) < 2:
        raise usage_error("weigh", "give the `evaluate` run folders of two or more members")
    out = [f"weigh.evals={quote_list(positional)}"]
    if flags.reference is not None:
        try:
            weights = [float(w) for w in flags.reference.split(",")]
        except ValueError:
            raise usage_error("weigh", f"--reference {flags.reference!r}: give numbers separated by commas, "
                                       "e.g. 0.5,0.3,0.2") from None
        out.append(f"weigh.reference={quote_list(weights)}")
    if flags.hold is not None:
        out.append(f"weigh.hold={quote_list([s.strip() for s in flags.hold.split(',') if s.strip()])}")
    if flags.baseline is not None:
        out.append(f"weigh.baseline={quote(flags.baseline)}")
    if flags.step is not None:
        out.append(f"weigh.step={quote(flags.step)}")
    if flags.race_metric is not None:
        out.append(f"weigh.race_metric={flags.race_metric}")
    return out


def handle(cfg: DictConfig, run_dir: Path) -> dict:
    """Choose the weights (``evaluation.ensemble_weights.weigh_folders``), which writes
    ``<run dir>/weights.json``; print the table and the ``ensemble`` command that builds them."""
    from faceattr.evaluation.ensemble_weights import weigh_folders  # deferred: reads the predictions with pandas

    weigh = OmegaConf.to_container(cfg.weigh, resolve=True)
    summary = weigh_folders(weigh["evals"], weigh["reference"], weigh["hold"], weigh["step"], run_dir,
                            weigh["race_metric"], weigh["baseline"])
    print(summary["table"])
    if summary["not_held"]:
        print(f"warning: no weights keep the baseline's figures for {', '.join(summary['not_held'])}; "
              "the line below gives those tasks the reference weights, which do not keep them either")
    if summary["command"]:
        print(f"To build it:\n{summary['command']}")
    else:
        print("One member carries every task alone: use it as it is, no ensemble needed.")
    return summary


COMMAND = Command(
    name="weigh",
    summary="per-task ensemble weights from the members' validation predictions: weigh EVAL_DIR EVAL_DIR ...",
    handler=handle,
    add_flags=add_flags,
    to_overrides=to_overrides,
    positional=True,
    examples=(
        ("weigh outputs/eval_val/a outputs/eval_val/b --hold utkface",
         "best weights on the other sources, utkface no worse than equal weights"),
        ("weigh outputs/eval_val/a outputs/eval_val/b outputs/eval_val/c --reference 0.5,0.3,0.2 --step 0.1",
         "against given weights, on a coarser grid"),
        ("weigh outputs/eval_val/a outputs/eval_val/new --hold utkface --baseline outputs/eval_val/shipped",
         "replacing a member: utkface no worse than the shipped model's figures"),
    ),
)
