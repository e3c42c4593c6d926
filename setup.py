"""Builds the two C extensions (gob_metrics.write._wire, the remote_write wire scanner, and
gob_metrics.write._values, the stored value encoding); everything else about the package is
declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gob_metrics.write._wire",
            ["gob_metrics/write/_wire.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        ),
        Extension(
            "gob_metrics.write._values",
            ["gob_metrics/write/_values.c"],
            # Plain IEEE double arithmetic: every encoded value is checked by computing it
            # back, and ClickHouse decodes it with the same operations.
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                                "-ffp-contract=off", "-fno-fast-math"],
        ),
    ]
)
