"""Command groups of the ``hvaeseg`` CLI; each module exposes ``register(subparsers)``."""
