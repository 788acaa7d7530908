"""``linear`` (miprun's default healer): refit, in closed form, the FFN down projection before each
cut from the FFN's hidden activations, so that it adds what the removed blocks added, then the
attention output projections of the two blocks after the cut on the healed model
(:mod:`miprun.healing`; measured in docs/healing.md)."""

from __future__ import annotations

from miprun.healing import AFTER_CUT, DEFAULT_RIDGE, LinearHealer


def refit_healer(ridge: float = DEFAULT_RIDGE["projection"], batch_size: int = 4, sequential: bool = True,
                 after_cut: bool | int = AFTER_CUT, after_cut_ridge: float = DEFAULT_RIDGE["projection"],
                 untie_head: bool = False, products: str = "auto", sink: str = "average") -> LinearHealer:
    """The down-projection refit, then the attention output projections of the blocks after each cut.

    :param ridge: ridge relative to the Gram's mean diagonal, shrinking toward the projection as it is.
    :param batch_size: healing sequences per forward batch (memory only).
    :param sequential: fit each cut on the model with the earlier cuts removed and healed.
    :param after_cut: how many blocks after each cut get their attention output projection
        refitted (false: none — the down projection before each cut only, as earlier versions did).
    :param after_cut_ridge: the relative ridge of that refit, toward the projection as it is.
    :param untie_head: let a cut at block 0 of a model whose head shares the token embedding untie
        the head to map the embedding (adds its parameters); by default that cut's own fit is left out.
    :param products: ``auto``: the healing passes and the fits' products multiply bfloat16 inputs
        with float32 sums on a CPU with bfloat16 units; ``float32``: float32 multiplications.
    :param sink: ``average``: each sequence's first token (the attention sink) is fitted as one token
        of the other tokens' mean target energy; ``skip``: left out (earlier versions; a refit on few
        sequences may then change what the sink sends, docs/healing.md).
    """
    return LinearHealer(fit="projection", ridge=ridge, batch_size=batch_size, sequential=sequential,
                        after_cut=after_cut, after_cut_ridge=after_cut_ridge, untie_head=untie_head,
                        products=products, sink=sink)
