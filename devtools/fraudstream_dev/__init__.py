"""fraudstream's development tools, not shipped with the service: the local launcher
(``fraudstream up``/``down``/``status``), the test environment and the chaos harness.

The product never imports this package; this package adds its commands to ``fraudstream``
through the ``fraudstream.commands`` entry point (see ``fraudstream_dev.commands``).
"""
