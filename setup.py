"""The one C extension, kept out of pyproject.toml (whose ext-modules table setuptools marks experimental).

kvbucket.clients._streamcopy: the client's copy into shared memory with non-temporal stores
(clients/_streamcopy.c). Optional: where it cannot be built (no C compiler) the SDK copies with numpy.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("kvbucket.clients._streamcopy", ["clients/_streamcopy.c"], extra_compile_args=["-O2"], optional=True),
    ],
)
