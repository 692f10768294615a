"""The klock package's version: the one place it is written.

pyproject.toml reads it (``[tool.setuptools.dynamic]``), ``klock.__version__``
re-exports it, and the client names itself with it in ``hello``.
"""

__version__ = "0.2.0"
