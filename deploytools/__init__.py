"""deploytools: safe, fleet-wide deploys of web services over SSH."""

__version__ = "0.1.0"
