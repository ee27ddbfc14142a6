"""The one compiled part of fedtask: the aggregate stage's weighted-sum kernel (fedtask_worker/_reduce.c).

Everything else is declared in pyproject.toml. The extension is optional: where no C compiler is at hand the install
goes on, and aggregation uses torch or numpy instead (slower; `fedtask_worker.aggregation.weighted_sum_backend()`
tells which one runs).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("fedtask_worker._reduce", ["worker_image/fedtask_worker/_reduce.c"],
                             extra_compile_args=["-O3", "-ffp-contract=off"], optional=True)])
