"""Read an ``hparams_search=`` sweep folder: the trials ranked by their objective, and what mattered.

A search (``python train.py -m hparams_search=digits_optuna``) is an ordinary multirun folder: every trial's
``.hydra/hydra.yaml`` holds the search space (``hydra.sweeper.params``, Hydra's sweep grammar: ``choice(...)``,
``tag(log, interval(a, b))``), and each trial folder its overrides (``.hydra/overrides.yaml``) and, once finished, its final
metrics (``metrics.json``, the objective being ``val/bpd``). ``python compare.py <search folder>`` adds to its table

- the trials ranked by objective, with the value each took for every searched parameter;
- the importance of each parameter, by Optuna's mean-decrease-in-impurity evaluator (a random forest fitted from
  the parameters to the objective over the finished trials; with a few dozen trials it is a coarse ranking, and a
  one-at-a-time ablation of the chosen recipe is the check that a factor matters).

The trials are rebuilt as an Optuna study from these files, so the importances need no Optuna storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vdmlab.analysis.report import markdown_table

OBJECTIVE = "val/bpd"


@dataclass
class Trial:
    """One finished trial: its number, the searched parameters' values and the objective."""

    number: int
    params: dict[str, Any]
    value: float


def sweeper_config(sweep_dir: Path) -> dict[str, Any]:
    """``hydra.sweeper`` of the sweep: from ``multirun.yaml`` when the sweeper wrote one, else from the first
    trial's ``.hydra/hydra.yaml`` (Optuna's sweeper writes none; every trial records the whole Hydra config)."""
    candidates = [sweep_dir / "multirun.yaml"]
    candidates += sorted(sweep_dir.glob("[0-9]*/.hydra/hydra.yaml"), key=lambda p: int(p.parent.parent.name)
                         if p.parent.parent.name.isdigit() else -1)
    for path in candidates:
        if path.is_file():
            config = yaml.safe_load(path.read_text()) or {}
            return dict((config.get("hydra") or {}).get("sweeper") or {})
    return {}


def search_space(sweep_dir: Path) -> dict[str, Any]:
    """The searched parameters as Optuna distributions, parsed from ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    params = sweeper_config(sweep_dir).get("params") or {}
    parser = OverridesParser.create()
    space = {}
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        if override.is_sweep_override():
            space[key] = create_optuna_distribution_from_override(override)
    return space


def is_search(sweep_dir: Path) -> bool:
    """A folder made by an Optuna search: its Hydra config names the Optuna sweeper and searches something."""
    sweeper = sweeper_config(sweep_dir)
    return "optuna" in str(sweeper.get("_target_", "")).lower() and bool(sweeper.get("params"))


def _value_in(distribution: Any, text: str) -> Any:
    """A trial's override value as the distribution's type (a categorical choice, or a float of an interval)."""
    choices = getattr(distribution, "choices", None)
    if choices is None:
        return float(text)
    for choice in choices:
        if str(choice) == text:
            return choice
    raise ValueError(f"{text!r} is not one of the choices {list(choices)}")


def read_trials(sweep_dir: Path, space: dict[str, Any] | None = None) -> list[Trial]:
    """Every finished trial (a folder with ``metrics.json`` holding the objective), in trial order."""
    space = search_space(sweep_dir) if space is None else space
    trials = []
    for folder in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        done, overrides = folder / "metrics.json", folder / ".hydra" / "overrides.yaml"
        if not (done.is_file() and overrides.is_file()):
            continue
        value = json.loads(done.read_text()).get(OBJECTIVE)
        if value is None:
            continue
        given = dict(o.lstrip("+").split("=", 1) for o in yaml.safe_load(overrides.read_text()) or [] if "=" in o)
        params = {key: _value_in(dist, given[key]) for key, dist in space.items() if key in given}
        trials.append(Trial(int(folder.name), params, float(value)))
    return trials


def importances(trials: list[Trial], space: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Importance of each searched parameter over the finished trials (shares summing to 1): the mean decrease in
    impurity of a random forest fitted to (parameters → objective). Optuna's fANOVA evaluator would be the first
    choice, but the Optuna that hydra-optuna-sweeper 1.2 pins (2.10) fails on current scikit-learn trees."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    complete = [t for t in trials if set(t.params) == set(space)]
    if len(complete) < 2:
        raise ValueError(f"importances need at least 2 finished trials with every parameter, got {len(complete)}")
    study = optuna.create_study(direction="minimize")
    study.add_trials([optuna.trial.create_trial(params=t.params, distributions=space, value=t.value) for t in complete])
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=seed)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def search_markdown(sweep_dir: Path) -> str:
    """The trials ranked by objective and the parameters' importances, as markdown."""
    space = search_space(sweep_dir)
    trials = sorted(read_trials(sweep_dir, space), key=lambda t: t.value)
    if not trials:
        return "No finished trial yet (no trial folder holds a metrics.json).\n"
    keys = list(space)
    rows = []
    for rank, t in enumerate(trials, 1):
        cells = [str(rank), str(t.number), f"{t.value:.4f}"]
        cells += [f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-")) for k in keys]
        rows.append(cells)
    text = (f"{len(trials)} finished trials, best first; objective {OBJECTIVE} (lower is better).\n\n"
            + markdown_table(["rank", "trial", OBJECTIVE, *keys], rows))
    try:
        shares = importances(trials, space)
    except ValueError as error:
        return text + f"\n\nNo importances: {error}.\n"
    table = markdown_table(["parameter", "importance"], [(key, f"{share:.3f}") for key, share in shares.items()])
    return (text + "\n\nImportance of each parameter (Optuna's mean decrease in impurity of a random forest fitted to "
            f"the finished trials; a coarse ranking with {len(trials)} trials):\n\n{table}\n")
