"""Test data: generated CT series and pydicom's bundled real-world files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_CHARSET_FILES = Path(pydicom.__file__).parent / "data" / "charset_files"


def make_ct_series(
    out_dir: Path,
    count: int,
    rows: int = 512,
    cols: int = 512,
    *,
    study_uid: str | None = None,
    accession: str = "ACC0001",
    patient_id: str = "PAT0001",
    seed: int = 1,
) -> list[Path]:
    """Write `count` CT images of rows×cols 16-bit pixels (512×512 ≈ 512 KB each) with unique UIDs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    base = rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16)
    for i in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = patient_id
        ds.PatientName = "TEST^ROUTER"
        ds.AccessionNumber = accession
        ds.Modality = "CT"
        ds.InstanceNumber = i + 1
        ds.StudyDate = "20261127"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        pixels = base.copy()
        pixels[0, : min(cols, 8)] = i  # every image differs
        ds.PixelData = pixels.tobytes()
        path = out_dir / f"ct_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The dataset after the file meta: what must arrive unchanged through the router."""
    with open(path, "rb") as f:
        meta = pydicom.filereader.read_preamble(f, False)  # noqa: F841 - positions f after preamble
        pydicom.filereader._read_file_meta_info(f)
        return f.read()


def sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def bundled_files_storescu_can_send() -> list[Path]:
    """pydicom's bundled files DCMTK storescu sends without a transfer-syntax profile: uncompressed,
    with file meta, not deliberately broken. Duplicated SOP Instance UIDs are kept once."""
    out, seen = [], set()
    uncompressed = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
    for p in sorted(PYDICOM_TEST_FILES.glob("*.dcm")) + sorted(PYDICOM_CHARSET_FILES.glob("*.dcm")):
        if any(bad in p.name for bad in ("trunc", "bad", "no_meta", "invalid", "nested_priv", "badVR")):
            continue
        if os.path.getsize(p) < 200:
            continue
        try:
            meta = pydicom.filereader.read_file_meta_info(p)
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        if str(meta.get("TransferSyntaxUID", "")) not in uncompressed:
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if not uid or uid in seen or "SOPClassUID" not in ds:
            continue
        seen.add(uid)
        out.append(p)
    return out
