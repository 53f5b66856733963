"""Build of the compiled JPEG path (tokenizer/jpeg/_scan*.c); everything else is in pyproject.toml.

`pip install -e .` builds it with the system's C compiler; without one the install still succeeds
(optional=True) and the tokenizer uses its reference path (libjpeg through jpeglib, numpy).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "tokenizer.jpeg._scan",
    sources=[f"tokenizer/jpeg/{f}.c" for f in ("_scan", "_jpeg_read", "_jpeg_write", "_tokens", "_grammar")],
    depends=["tokenizer/jpeg/_scan.h"],
    optional=True,
)])
