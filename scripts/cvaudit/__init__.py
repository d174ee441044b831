"""cvaudit: batch interpretability and behaviour audits of image classifiers.

The importable core of the workflow. It never imports snakemake; the scripts in scripts/ are the
thin glue between Snakemake rules and these functions, and the tests call them directly.
"""

__version__ = "0.1.0"


class CvauditError(Exception):
    """A user-facing error: the message names the file or config key and the fix."""
