"""miprun-cka: a miprun plugin adding the ``linear-cka`` block scorer."""

__version__ = "0.1.0"
