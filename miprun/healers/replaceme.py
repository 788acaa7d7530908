"""``replaceme``: ReplaceMe's (Shopkhoev et al. 2025) hidden × hidden map on the FFN output before
each cut, fitted in closed form and folded into the down projection (:mod:`miprun.healing`)."""

from __future__ import annotations

from miprun.healing import DEFAULT_RIDGE, LinearHealer


def replaceme_healer(ridge: float = DEFAULT_RIDGE["map"], batch_size: int = 4, sequential: bool = True,
                     untie_head: bool = False, sink: str = "skip") -> LinearHealer:
    """ReplaceMe's map.

    :param ridge: ridge relative to the Gram's mean diagonal, shrinking toward the identity.
    :param batch_size: healing sequences per forward batch (memory only).
    :param sequential: fit each cut on the model with the earlier cuts removed and healed.
    :param untie_head: let a cut at block 0 of a model whose head shares the token embedding untie
        the head to map the embedding (adds its parameters); by default that cut's own fit is left out.
    :param sink: ``skip`` (default, as the map was measured): each sequence's first token is left
        out of the fit; ``average``: fitted as one token of the other tokens' mean target energy.
    """
    return LinearHealer(fit="map", ridge=ridge, batch_size=batch_size, sequential=sequential, untie_head=untie_head,
                        sink=sink)
