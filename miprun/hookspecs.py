"""Hook specifications: the contract between miprun and its plugins.

A plugin is any module or object with functions marked ``@miprun.hookimpl`` whose names match the
hooks below. Third-party packages expose one through the ``miprun`` entry-point group::

    [project.entry-points.miprun]
    my_plugin = "my_package.plugin"

Every hook receives a ``register`` callback with the signature
``register(name, factory, *, description="")``:

- ``name`` is what users type on the command line (``--estimator renyi``); names are unique per
  kind across all plugins, and a duplicate is an error that names both providers.
- ``factory`` builds the strategy: a callable taking keyword options, or a ``"module:attribute"``
  string that is imported only when the strategy is used (keep heavy imports such as torch out of
  the module that implements the hooks so that ``miprun list`` stays fast).
- ``description`` is the one line shown by ``miprun list``.

The object a factory returns must follow the protocol of its kind in :mod:`miprun.strategies`.
"""

from __future__ import annotations

import pluggy

from miprun import PROJECT

hookspec = pluggy.HookspecMarker(PROJECT)

# --------------------------------------------------------------------------- collect


@hookspec
def miprun_register_collectors(register):
    """Register collectors: strategies that run the model on calibration tokens and return what
    the scorers need (e.g. the residual stream at every block boundary).

    :param register: ``register(name, factory, *, description="")``; the factory returns an object
        following :class:`miprun.strategies.Collector`.
    """


# --------------------------------------------------------------------------- estimate


@hookspec
def miprun_register_estimators(register):
    """Register mutual-information estimators: strategies that estimate MI between two sample
    matrices ``x`` (n × d_x) and ``y`` (n × d_y) drawn from the same n tokens.

    :param register: ``register(name, factory, *, description="")``; the factory returns an object
        following :class:`miprun.strategies.Estimator`.
    """


# --------------------------------------------------------------------------- score


@hookspec
def miprun_register_scorers(register):
    """Register scorers: strategies that turn collected states into importance scores of single
    blocks and contiguous spans of blocks (lower importance = safer to remove) — and, for scorers
    that run the pruned model, of any set of blocks removed together.

    :param register: ``register(name, factory, *, description="")``; the factory returns an object
        following :class:`miprun.strategies.Scorer`.
    """


# --------------------------------------------------------------------------- select


@hookspec
def miprun_register_selectors(register):
    """Register selectors: strategies that choose which N blocks to remove from span scores.

    :param register: ``register(name, factory, *, description="")``; the factory returns an object
        following :class:`miprun.strategies.Selector`.
    """


# --------------------------------------------------------------------------- operate


@hookspec
def miprun_register_surgeons(register):
    """Register surgeons: strategies that edit the model in place to remove the selected parts and
    keep its configuration consistent, so that the saved checkpoint loads with stock transformers.

    :param register: ``register(name, factory, *, description="")``; the factory returns an object
        following :class:`miprun.strategies.Surgeon`.
    """


KINDS: dict[str, str] = {
    "collector": "miprun_register_collectors",
    "estimator": "miprun_register_estimators",
    "scorer": "miprun_register_scorers",
    "selector": "miprun_register_selectors",
    "surgeon": "miprun_register_surgeons",
}
"""Strategy kind → name of the hook that registers strategies of that kind."""
