from tests.support.tools import tools  # noqa: F401  (session fixture: helm, prometheus, promtool)
