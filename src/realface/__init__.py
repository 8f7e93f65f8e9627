"""realface: face forgery detection that learns what real faces look like."""

__version__ = "0.1.0"
