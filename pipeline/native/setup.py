"""The C extension of foliowatch-wiredecode (metadata: pyproject.toml)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "foliowatch_wiredecode", sources=["wiredecode.c"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"])])
