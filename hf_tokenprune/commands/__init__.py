"""The ``hf-tokenprune`` command line: `main` builds the parser from one module per verb (``plan``, ``benchmark``,
``visualize``, ``card``, ``tune``, ``export``) and the options they share (`options`).

Each verb module defines ``add_parser(commands)`` and ``run(args)``; it imports the library inside ``run`` only,
so that ``hf-tokenprune --help`` and bad-input errors come back without importing torch. The library never imports
this package.
"""
