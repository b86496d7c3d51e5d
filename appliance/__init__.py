"""DICOM router appliance: the router daemon (``appliance.router``) and its console (``appliance.tui``)."""

import os

__version__ = "0.1.0"

# The router does no linear algebra, yet numpy (which pydicom loads for pixel data) starts one OpenBLAS
# thread per core when it is imported: CPU at the start of every `dicom-router` command (~0.1 s of a
# ~0.5 s start) and a thread pool in every process. One thread unless the environment says otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
