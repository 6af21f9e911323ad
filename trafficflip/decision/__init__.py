"""The pure core: model, health (rise/fall), ``decide()``, operator commands and the ``Plan``.

Nothing here does I/O or reads a clock: time comes in as an argument.
"""
