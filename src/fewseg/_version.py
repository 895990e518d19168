"""The version of fewseg, in one place (pyproject.toml and fewseg.__version__ read it)."""
__version__ = "0.1.0"
