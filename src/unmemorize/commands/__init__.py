"""The ``unmemorize`` commands, one module each, all found by one rule: ``unmemorize NAME`` lives in
``commands/NAME.py``, which defines

    add_parser(subparsers)   its options, built from the stage's config dataclass (``options.py``)
    run(args)                checks the options, calls the stage's API and prints

A command holds no method of its own: the work is in the stage it names (``curvature/``,
``basis/``, ``edit/``, ``evaluate/``, ``analysis/``, ``baselines/``, ``testbed/``). ``cli.py``
assembles the parser from ``COMMANDS`` (the order of ``unmemorize --help``) and handles errors.
"""

from . import analyze, collect, compare, decompose, demo, edit, eval, spectrum, stress, testbed, unlearn

COMMANDS = {module.__name__.rsplit(".", 1)[-1]: module
            for module in (collect, edit, spectrum, analyze, demo, compare, decompose, eval, stress, unlearn, testbed)}
