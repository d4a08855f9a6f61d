"""Operations: the ``fraudstream`` command (``ops.cli``) and the monitor it prints.

This is the composition root; it may import every layer, and no layer imports it. The
processes of a local stack are started by the development tools (``devtools/``), which add
their commands to ``fraudstream``; nothing here imports them.
"""
