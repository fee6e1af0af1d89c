"""The command line: ``legacyflo-daemon check|submit|run|status``.

The top layer: nothing imports it.
"""
