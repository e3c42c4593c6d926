"""Builds the one C extension (gob_metrics.write._wire, the remote_write wire scanner);
everything else about the package is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gob_metrics.write._wire",
            ["gob_metrics/write/_wire.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
