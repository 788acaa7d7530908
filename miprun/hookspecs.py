"""Hook specifications: the contract between miprun and its plugins.

A plugin is any module or object with functions marked ``@miprun.hookimpl`` whose names match the
hooks below. Third-party packages expose one through the ``miprun`` entry-point group::

    [project.entry-points.miprun]
    my_plugin = "my_package.plugin"

Every strategy hook receives a ``register`` callback (:class:`miprun.contracts.Register`)::

    register(name, factory, *, description="", **capabilities)

- ``name`` is what users type on the command line (``--estimator renyi``); names are unique per
  kind across all plugins, and a duplicate is an error that names both providers.
- ``factory`` builds the strategy: a callable taking keyword options, or a ``"module:attribute"``
  string that is imported only when the strategy is used (keep heavy imports such as torch out of
  the module that implements the hooks so that ``miprun list`` stays fast).
- ``description`` is the one line shown by ``miprun list``.
- ``capabilities`` declare what the strategy needs and works with — granularity, whether it reads
  collected states, runs the model, needs an estimator or scores, its default partners — as the
  keywords of :class:`miprun.contracts.Capabilities`. The host plans runs from them alone.

The object a factory returns must follow the protocol of its kind in :mod:`miprun.contracts`.
Built-in strategies (:mod:`miprun.builtins`) are registered through these same hooks.
"""

from __future__ import annotations

import pluggy

from miprun import PROJECT
from miprun.contracts import Register, RegisterArchitecture

hookspec = pluggy.HookspecMarker(PROJECT)

# --------------------------------------------------------------------------- collect


@hookspec
def miprun_register_collectors(register: Register) -> None:
    """Register collectors: strategies that run the model on calibration tokens and return what
    scorers read — the residual stream at every block boundary (:class:`~miprun.contracts.BoundaryStates`)
    or the FFN neurons of every layer (:class:`~miprun.contracts.FFNActivations`).

    :param register: the factory returns a :class:`~miprun.contracts.Collector`. Capabilities:
        ``granularity``.
    """


# --------------------------------------------------------------------------- estimate


@hookspec
def miprun_register_estimators(register: Register) -> None:
    """Register mutual-information estimators: between two sample matrices over the same tokens
    (:class:`~miprun.contracts.Estimator`, block scorers) or between every pair of scalar neurons of
    a layer (:class:`~miprun.contracts.PairwiseEstimator`, neuron scorers).

    :param register: capabilities: ``granularity``, ``pairwise`` (True for pairwise estimators).
    """


# --------------------------------------------------------------------------- score


@hookspec
def miprun_register_scorers(register: Register) -> None:
    """Register scorers: strategies that turn collected inputs into importance — span scores of
    single blocks and contiguous spans (lower importance = safer to remove; with ``set_scores``,
    any block set), or pairwise neuron scores.

    :param register: the factory returns a :class:`~miprun.contracts.Scorer`. Capabilities:
        ``granularity``, ``reads_states``, ``runs_model``, ``needs_estimator``, ``pairwise``,
        ``set_scores``, ``default_selector``, ``default_estimator``.
    """


# --------------------------------------------------------------------------- select


@hookspec
def miprun_register_selectors(register: Register) -> None:
    """Register selectors: strategies that choose what to remove — N blocks, or N neurons from
    every FFN layer.

    :param register: the factory returns a :class:`~miprun.contracts.Selector`. Capabilities:
        ``granularity``, ``needs_scores``, ``reads_states``, ``runs_model``, ``set_scores``,
        ``default_scorer``, ``default_surgeon``.
    """


# --------------------------------------------------------------------------- operate


@hookspec
def miprun_register_surgeons(register: Register) -> None:
    """Register surgeons: strategies that edit the model in place to carry out a selection and keep
    its configuration consistent, so that the saved checkpoint loads with stock transformers.

    :param register: the factory returns a :class:`~miprun.contracts.Surgeon`. Capabilities:
        ``granularity``.
    """


# --------------------------------------------------------------------------- heal


@hookspec
def miprun_register_healers(register: Register) -> None:
    """Register healers: strategies that, before the surgeon removes what was selected, change the
    weights that stay so that the pruned model reproduces the dense one as well as a fit without
    training can (miprun's closed-form refit of the down projection before each cut, ReplaceMe's
    map). The checkpoint keeps the architecture of plain removal.

    :param register: the factory returns a :class:`~miprun.contracts.Healer`. Capabilities:
        ``granularity``, ``heals`` (the surgeons whose removal it heals, e.g. ``("remove-blocks",)``).
    """


# --------------------------------------------------------------------------- architectures


@hookspec
def miprun_register_architectures(register: RegisterArchitecture) -> None:
    """Register architectures miprun can prune: ``register(model_type, spec, *, description="")``
    with ``model_type`` the value of ``config.model_type`` and ``spec`` an
    :class:`~miprun.contracts.ArchitectureSpec` (where the blocks and FFN projections live, which
    config fields hold per-layer lists). A ``model_type`` registered twice is an error naming both
    providers.
    """


KINDS: dict[str, str] = {
    "collector": "miprun_register_collectors",
    "estimator": "miprun_register_estimators",
    "scorer": "miprun_register_scorers",
    "selector": "miprun_register_selectors",
    "surgeon": "miprun_register_surgeons",
    "healer": "miprun_register_healers",
}
"""Strategy kind → name of the hook that registers strategies of that kind."""

ARCHITECTURES_HOOK = "miprun_register_architectures"
"""Name of the hook that registers architectures."""
