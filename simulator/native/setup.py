"""The C extension of foliowatch-wireencode (metadata: pyproject.toml)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "foliowatch_wireencode", sources=["wireencode.c"],
    # no -ffast-math: the float path relies on IEEE division and nextafter
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"])])
