"""The DICOM router: receiver, queue, forwarders, and the `dicom-router` command surface.

This package never imports Textual; the console (appliance.tui) reaches it through one backend module.
"""
