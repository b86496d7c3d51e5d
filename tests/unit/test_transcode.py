"""appliance.router.transcode: decompress for a destination that refuses the stored transfer syntax.

pydicom's bundled files are the real-world encodings: every compressed one must decompress, lossless ones
to exactly the pixels of the uncompressed original pydicom ships beside them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from appliance.router.transcode import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    UNCOMPRESSED_TARGETS,
    TranscodeFailed,
    can_decode,
    choose_syntax,
    decompress,
    describe_ts,
    fallback_syntaxes,
    installed_decoders,
    is_compressed,
    is_lossy,
)
from tests.support.data import PYDICOM_TEST_FILES, make_ct_series

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
J2K_MC_LOSSLESS = "1.2.840.10008.1.2.4.92"
MPEG2 = "1.2.840.10008.1.2.4.100"
JPEG_XL = "1.2.840.10008.1.2.4.112"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE = "1.2.840.10008.1.2.5"
UNKNOWN = "1.2.3.4.5.6.7"
BOTH = [EXPLICIT_VR_LE, IMPLICIT_VR_LE]

# Every bundled file with encapsulated pixel data that is not deliberately broken (pydicom 3.0.2).
DECODABLE = [
    "693_J2KI.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "JPEG-lossy.dcm",
    "JPEG2000.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_rgb_dcmtk_+eb+cy+n1.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    "SC_rgb_gdcm_KY.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm",
    "SC_rgb_jpeg.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_32bit.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "examples_jpeg2k.dcm",
    "examples_ybr_color.dcm",
    "rtdose_rle.dcm",
    "rtdose_rle_1frame.dcm",
]
BROKEN = "JPEG2000-embedded-sequence-delimiter.dcm"  # pydicom's: 4 codestream bytes overwritten

# Lossless copies and the uncompressed original pydicom ships with them.
WITH_REFERENCE = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("rtdose_rle.dcm", "rtdose.dcm"),
    ("rtdose_rle_1frame.dcm", "rtdose_1frame.dcm"),
    ("image_dfl.dcm", "image_dfl.dcm"),  # deflate: pydicom inflates on reading, so the file is its own reference
]


def bundled(name: str) -> Path:
    path = PYDICOM_TEST_FILES / name
    assert path.exists(), f"pydicom no longer bundles {name}"
    return path


def read(name: str | Path, **kwargs: object) -> Dataset:
    with warnings.catch_warnings():  # SC_rgb_jpeg.dcm: "Expected explicit VR, but found implicit VR"
        warnings.simplefilter("ignore", UserWarning)
        return pydicom.dcmread(bundled(name) if isinstance(name, str) else name, **kwargs)  # type: ignore[arg-type]


def round_trip(ds: Dataset, tmp_path: Path) -> Dataset:
    out = tmp_path / "out.dcm"
    ds.save_as(out, enforce_file_format=True)
    return pydicom.dcmread(out)


def native_size(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames") or 1)
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8 * frames
    return size + size % 2


# -- every bundled compressed file -----------------------------------------------------------------------


def test_the_catalogue_covers_every_bundled_compressed_file() -> None:
    """A pydicom upgrade that bundles a new compressed file must be noticed here, not silently skipped."""
    found = set()
    for path in PYDICOM_TEST_FILES.glob("*.dcm"):
        try:
            ds = read(path, stop_before_pixels=True)
        except Exception:
            continue
        ts = str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "") or "")
        if ts and is_compressed(ts) and "PixelData" in read(path):
            found.add(path.name)
    assert found == set(DECODABLE) | {BROKEN}


@pytest.mark.parametrize("target", BOTH, ids=["explicit", "implicit"])
@pytest.mark.parametrize("name", DECODABLE)
def test_every_bundled_compressed_file_decompresses(name: str, target: str, tmp_path: Path) -> None:
    original = read(name)
    source_ts = str(original.file_meta.TransferSyntaxUID)
    expected = original.pixel_array  # pydicom's own decode (YCbCr shown as RGB, as we send lossy YCbCr)

    ds = read(name, defer_size="1 KB")  # as the outgoing pipeline reads: pixel data loaded on demand
    decompress(ds, target)
    back = round_trip(ds, tmp_path)

    assert back.file_meta.TransferSyntaxUID == target
    assert not back["PixelData"].is_undefined_length
    assert len(back.PixelData) == native_size(back)
    assert back.SOPInstanceUID == original.SOPInstanceUID
    assert back.get("NumberOfFrames") == original.get("NumberOfFrames")
    assert back.PhotometricInterpretation not in ("YBR_FULL_422", "YBR_ICT", "YBR_RCT")
    if back.SamplesPerPixel > 1:
        assert back.PlanarConfiguration == 0
    assert np.array_equal(back.pixel_array, expected)
    if is_lossy(source_ts) and original.get("LossyImageCompression") != "00":
        assert back.LossyImageCompression == "01"  # decoding does not make it lossless
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in original:
                assert back[keyword].value == original[keyword].value
    else:
        assert back.get("LossyImageCompression") == original.get("LossyImageCompression")


@pytest.mark.parametrize("target", BOTH, ids=["explicit", "implicit"])
@pytest.mark.parametrize(("name", "reference"), WITH_REFERENCE)
def test_lossless_sources_give_the_uncompressed_originals_bytes(
    name: str, reference: str, target: str, tmp_path: Path
) -> None:
    ds = read(name)
    decompress(ds, target)
    back = round_trip(ds, tmp_path)
    assert back.PixelData == read(reference).PixelData
    assert back.file_meta.TransferSyntaxUID == target


def test_three_lossless_codecs_of_one_image_agree() -> None:
    """SC_rgb as RLE, as JPEG Lossless and as (reversible) JPEG 2000: three decoders, one image."""
    pixels = []
    for name in ("SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm"):
        ds = read(name)
        decompress(ds, EXPLICIT_VR_LE)
        pixels.append(ds.PixelData)
    assert pixels[0] == pixels[1] == pixels[2]


def test_12_bit_jpeg_extended_decodes_through_gdcm() -> None:
    """pydicom's GDCM plugin refuses 12-bit JPEG Extended; ours decodes it (JPGExtended is the fixed
    copy of JPEG-lossy: the same pixels)."""
    a, b = read("JPGExtended.dcm"), read("JPEG-lossy.dcm")
    decompress(a, EXPLICIT_VR_LE)
    decompress(b, EXPLICIT_VR_LE)
    assert a.PixelData == b.PixelData
    assert a.BitsStored == 12 and 0 < a.pixel_array.max() < 4096


@pytest.mark.parametrize("target", BOTH, ids=["explicit", "implicit"])
@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k-lossless"])
def test_generated_multiframe_ct_round_trips_exactly(syntax: str, target: str, tmp_path: Path) -> None:
    """A 16-bit signed 4-frame CT, compressed here by pydicom's own encoders, comes back bit for bit."""
    [path] = make_ct_series(tmp_path / "ct", 1, rows=64, cols=48)
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    frames = np.random.default_rng(7).integers(-2000, 3000, size=(4, 64, 48), dtype=np.int16)
    ds.NumberOfFrames = 4
    ds.compress(syntax, frames, encoding_plugin="pydicom" if syntax == RLELossless else "")
    compressed = round_trip(ds, tmp_path)

    decompress(compressed, target)
    back = round_trip(compressed, tmp_path)
    assert back.PixelData == frames.astype("<i2").tobytes()
    assert back.NumberOfFrames == 4


# -- what decompressing sets ------------------------------------------------------------------------------


def _small_colour_dataset(photometric: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 6, 8, 3
    ds.PhotometricInterpretation, ds.PlanarConfiguration = photometric, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def test_lossless_ybr_full_is_not_colour_converted(tmp_path: Path) -> None:
    """YCbCr → RGB rounds; a lossless source keeps its colour space, so the bytes come back exactly."""
    ds = _small_colour_dataset("YBR_FULL")
    pixels = np.random.default_rng(3).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
    compressed = round_trip(ds, tmp_path)

    decompress(compressed, EXPLICIT_VR_LE)
    assert compressed.PhotometricInterpretation == "YBR_FULL"
    assert compressed.PixelData == pixels.tobytes()


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"])
def test_lossy_ybr_full_422_becomes_rgb(name: str) -> None:
    ds = read(name)
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    decompress(ds, EXPLICIT_VR_LE)
    assert ds.PhotometricInterpretation == "RGB"
    assert len(ds.PixelData) == native_size(ds)  # full chroma: 3 samples per pixel, not 422's 2


def test_jpeg2000_ybr_rct_becomes_rgb() -> None:
    ds = read("examples_jpeg2k.dcm")
    assert ds.PhotometricInterpretation == "YBR_RCT"
    decompress(ds, EXPLICIT_VR_LE)
    assert ds.PhotometricInterpretation == "RGB"


def test_a_lossy_source_without_the_attribute_is_marked_lossy() -> None:
    ds = read("JPEGLSNearLossless_08.dcm")
    assert "LossyImageCompression" not in ds
    decompress(ds, EXPLICIT_VR_LE)
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_14495_1"


def test_jpeg_baseline_claiming_lossless_is_marked_lossy() -> None:
    ds = read("SC_rgb_jpeg_dcmtk.dcm")
    ds.LossyImageCompression = "00"  # baseline JPEG is lossy whatever the sender says
    decompress(ds, EXPLICIT_VR_LE)
    assert ds.LossyImageCompression == "01"


def test_jpeg2000_declared_lossless_stays_lossless_and_uncoloured() -> None:
    ds = read("SC_rgb_gdcm_KY.dcm")  # reversible coding in the JPEG 2000 (lossy-capable) syntax
    ds.LossyImageCompression = "00"
    decompress(ds, EXPLICIT_VR_LE)
    assert ds.LossyImageCompression == "00"


def test_lossless_sources_get_no_lossy_marking() -> None:
    ds = read("MR_small_RLE.dcm")
    decompress(ds, EXPLICIT_VR_LE)
    assert "LossyImageCompression" not in ds and "LossyImageCompressionMethod" not in ds


def test_extended_offset_table_is_dropped() -> None:
    ds = read("MR_small_RLE.dcm")
    ds.ExtendedOffsetTable = (0).to_bytes(8, "little")
    ds.ExtendedOffsetTableLengths = len(ds.PixelData).to_bytes(8, "little")
    decompress(ds, EXPLICIT_VR_LE)
    assert "ExtendedOffsetTable" not in ds and "ExtendedOffsetTableLengths" not in ds


def _with_icon(tmp_path: Path, icon_pixel_data: bytes) -> Dataset:
    ds = read("MR_small_RLE.dcm")
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel = 4, 4, 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.add_new(0x7FE00010, "OB", icon_pixel_data)
    icon["PixelData"].is_undefined_length = True
    ds.IconImageSequence = [icon]
    return round_trip(ds, tmp_path)


def test_an_encapsulated_icon_is_decompressed_too(tmp_path: Path) -> None:
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    scratch = _small_colour_dataset("MONOCHROME2")
    scratch.Rows, scratch.Columns, scratch.SamplesPerPixel = 4, 4, 1
    del scratch.PlanarConfiguration
    scratch.compress(RLELossless, pixels, encoding_plugin="pydicom")
    ds = _with_icon(tmp_path, scratch.PixelData)

    decompress(ds, EXPLICIT_VR_LE)
    back = round_trip(ds, tmp_path)
    icon = back.IconImageSequence[0]
    assert not icon["PixelData"].is_undefined_length
    assert icon.PixelData == pixels.tobytes()


def test_an_undecodable_icon_is_dropped_not_the_object(tmp_path: Path) -> None:
    three_segments = (3).to_bytes(4, "little") + b"".join(o.to_bytes(4, "little") for o in (64, 70, 76)) + bytes(52)
    ds = _with_icon(tmp_path, encapsulate([three_segments + b"garbage!" * 3]))  # 1 sample needs 1 segment
    decompress(ds, EXPLICIT_VR_LE)
    back = round_trip(ds, tmp_path)
    assert "IconImageSequence" not in back
    assert back.PixelData == read("MR_small.dcm").PixelData


def test_no_pixel_data_just_changes_the_encoding(tmp_path: Path) -> None:
    ds = read("UN_sequence.dcm")  # a private sequence only, under JPEG Lossless SV1
    decompress(ds, IMPLICIT_VR_LE)
    assert round_trip(ds, tmp_path).file_meta.TransferSyntaxUID == IMPLICIT_VR_LE


def test_uncompressed_encodings_swap_without_decoding(tmp_path: Path) -> None:
    ds = read("MR_small.dcm")
    decompress(ds, IMPLICIT_VR_LE)
    back = round_trip(ds, tmp_path)
    assert back.file_meta.TransferSyntaxUID == IMPLICIT_VR_LE
    assert back.PixelData == read("MR_small.dcm").PixelData


def test_the_dataset_can_be_handed_to_pynetdicom_as_is() -> None:
    """send_c_store(ds) refuses a dataset whose original encoding disagrees with its file meta."""
    ds = read("MR_small_RLE.dcm")
    decompress(ds, IMPLICIT_VR_LE)
    assert ds.original_encoding == (True, True)


# -- what it refuses, in words an operator can act on --------------------------------------------------


def test_damaged_pixel_data_fails_with_the_remedy_and_leaves_the_dataset_alone() -> None:
    ds = read(BROKEN)
    before = ds.PixelData
    with pytest.raises(TranscodeFailed) as failed:
        decompress(ds, EXPLICIT_VR_LE)
    message = str(failed.value)
    assert "JPEG 2000 (1.2.840.10008.1.2.4.91)" in message
    assert "damaged" in message
    assert "enable JPEG 2000 on the destination" in message and "transcode: never" in message
    assert ds.file_meta.TransferSyntaxUID == J2K and ds.PixelData == before


@pytest.mark.parametrize(
    ("ts", "words"),
    [
        (MPEG2, "no decoder for it is installed"),
        (UNKNOWN, "does not know this transfer syntax"),
        (EXPLICIT_VR_BE, "does not convert the retired big endian"),
    ],
)
def test_a_syntax_it_cannot_decode_is_refused_clearly(ts: str, words: str) -> None:
    ds = read("MR_small_RLE.dcm")
    ds.file_meta.TransferSyntaxUID = UID(ts)
    with pytest.raises(TranscodeFailed) as failed:
        decompress(ds, EXPLICIT_VR_LE)
    assert words in str(failed.value)
    assert describe_ts(ts) in str(failed.value) and "transcode: never" in str(failed.value)


def test_it_never_compresses() -> None:
    with pytest.raises(TranscodeFailed, match="never compresses"):
        decompress(read("MR_small.dcm"), JPEG_BASELINE)


def test_too_large_for_native_encoding_is_refused_before_decoding() -> None:
    ds = _small_colour_dataset("YBR_FULL_422")
    ds.file_meta.TransferSyntaxUID = UID(JPEG_BASELINE)
    ds.Rows = ds.Columns = 4096
    ds.NumberOfFrames = 100  # 4096 × 4096 × 3 × 100 = 5 GB uncompressed
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(TranscodeFailed, match=r"5\.0 GB of pixels \(100 frames\).*4 GB"):
        decompress(ds, EXPLICIT_VR_LE)


def test_an_object_without_a_transfer_syntax_is_refused() -> None:
    ds = read("MR_small_RLE.dcm")
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(TranscodeFailed, match="no Transfer Syntax UID"):
        decompress(ds, EXPLICIT_VR_LE)


# -- which syntaxes to propose, and which to send in ------------------------------------------------------

DECODABLE_SYNTAXES = [
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR,
    J2K_LOSSLESS,
    J2K,
    HTJ2K_LOSSLESS,
    "1.2.840.10008.1.2.4.202",
    HTJ2K,
    RLE,
]
NOT_DECODABLE = [J2K_MC_LOSSLESS, "1.2.840.10008.1.2.4.93", MPEG2, JPEG_XL, "1.2.840.10008.1.2.1.98", UNKNOWN]


@pytest.mark.parametrize("ts", DECODABLE_SYNTAXES)
def test_the_installed_decoders_cover(ts: str) -> None:
    assert can_decode(ts), f"no decoder for {describe_ts(ts)}: {installed_decoders()}"
    assert is_compressed(ts)
    assert fallback_syntaxes(ts, "decompress") == [EXPLICIT_VR_LE, IMPLICIT_VR_LE]


@pytest.mark.parametrize("ts", NOT_DECODABLE + [EXPLICIT_VR_BE])
def test_nothing_to_fall_back_to_without_a_decoder(ts: str) -> None:
    assert not can_decode(ts)
    assert fallback_syntaxes(ts, "decompress") == []


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (EXPLICIT_VR_LE, [IMPLICIT_VR_LE]),
        (IMPLICIT_VR_LE, [EXPLICIT_VR_LE]),
        (DEFLATED_EXPLICIT_VR_LE, [EXPLICIT_VR_LE, IMPLICIT_VR_LE]),
    ],
)
def test_uncompressed_fallbacks(ts: str, expected: list[str]) -> None:
    assert fallback_syntaxes(ts, "decompress") == expected
    assert not is_compressed(ts) and not is_lossy(ts)


@pytest.mark.parametrize("ts", DECODABLE_SYNTAXES + [EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE])
def test_policy_never_proposes_nothing_extra(ts: str) -> None:
    assert fallback_syntaxes(ts, "never") == []


def test_an_unknown_policy_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="decompress, never"):
        fallback_syntaxes(J2K, "sometimes")


@pytest.mark.parametrize(
    ("stored", "accepted", "policy", "chosen"),
    [
        (J2K, {J2K, EXPLICIT_VR_LE}, "decompress", J2K),  # as stored whenever accepted
        (J2K, {EXPLICIT_VR_LE, IMPLICIT_VR_LE}, "decompress", EXPLICIT_VR_LE),
        (J2K, {IMPLICIT_VR_LE}, "decompress", IMPLICIT_VR_LE),
        (J2K, {EXPLICIT_VR_LE, IMPLICIT_VR_LE}, "never", None),
        (J2K, set(), "decompress", None),
        (J2K_LOSSLESS, {JPEG_BASELINE}, "decompress", None),  # never re-compressed, least of all lossy
        (MPEG2, {EXPLICIT_VR_LE, IMPLICIT_VR_LE}, "decompress", None),  # no decoder
        (EXPLICIT_VR_LE, {IMPLICIT_VR_LE}, "decompress", IMPLICIT_VR_LE),
        (EXPLICIT_VR_LE, {IMPLICIT_VR_LE}, "never", None),
        (DEFLATED_EXPLICIT_VR_LE, {EXPLICIT_VR_LE}, "decompress", EXPLICIT_VR_LE),
        (EXPLICIT_VR_BE, {EXPLICIT_VR_LE}, "decompress", None),
    ],
)
def test_choose_syntax(stored: str, accepted: set[str], policy: str, chosen: str | None) -> None:
    assert choose_syntax(stored, accepted, policy) == chosen
    if chosen is not None and chosen != stored:
        assert chosen in UNCOMPRESSED_TARGETS


@pytest.mark.parametrize(
    ("ts", "lossy"),
    [
        (JPEG_BASELINE, True),
        (JPEG_EXTENDED, True),
        (JPEG_LOSSLESS, False),
        (JPEG_LOSSLESS_SV1, False),
        (JPEG_LS_LOSSLESS, False),
        (JPEG_LS_NEAR, True),
        (J2K_LOSSLESS, False),
        (J2K, True),
        (HTJ2K_LOSSLESS, False),
        (HTJ2K, True),
        (RLE, False),
        (MPEG2, True),
        (EXPLICIT_VR_LE, False),
        (UNKNOWN, False),
    ],
)
def test_is_lossy(ts: str, lossy: bool) -> None:
    assert is_lossy(ts) is lossy


def test_describe_ts() -> None:
    assert describe_ts(J2K_LOSSLESS) == "JPEG 2000 Lossless (1.2.840.10008.1.2.4.90)"
    assert describe_ts(EXPLICIT_VR_LE) == "Explicit VR Little Endian (1.2.840.10008.1.2.1)"
    assert describe_ts(UNKNOWN) == f"unknown transfer syntax {UNKNOWN}"
