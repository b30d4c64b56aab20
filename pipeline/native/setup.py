"""The C extensions of foliowatch-wiredecode (metadata: pyproject.toml): the wire decoder
and the window files' Parquet writer."""
from setuptools import Extension, setup

FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
         "-Wno-missing-field-initializers"]

setup(ext_modules=[
    Extension("foliowatch_wiredecode", sources=["wiredecode.c"], depends=["arrow_c_abi.h"],
              extra_compile_args=FLAGS),
    Extension("foliowatch_parquetwrite", sources=["parquetwrite.c"],
              depends=["arrow_c_abi.h"], extra_compile_args=FLAGS),
])
