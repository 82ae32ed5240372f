"""Builds the native text scanner of the quality rules (plain C, loaded with ctypes); the
rest of the package metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tamis.native._textscan",
            sources=["include/tamis/native/textscan.c"],
            extra_compile_args=["-O3", "-std=c99"],
        )
    ]
)
