"""Builds the native scanners (plain C, loaded with ctypes): the quality rules' text scanner,
the PII name rules' word finder and the whitespace rewrites of normalize and exact dedup.
The rest of the package metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tamis.native._textscan",
            sources=[
                "include/tamis/native/textscan.c",
                "include/tamis/native/nametokens.c",
                "include/tamis/native/digitruns.c",
                "include/tamis/native/shingles.c",
                "include/tamis/native/whitespace.c",
            ],
            extra_compile_args=["-O3", "-std=c99"],
        )
    ]
)
