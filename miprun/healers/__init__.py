"""Built-in healers, one per module: each builds a :class:`miprun.healing.LinearHealer` with its fit."""
