"""DICOM router appliance: the router daemon (``appliance.router``) and its console (``appliance.tui``)."""

__version__ = "0.1.0"
