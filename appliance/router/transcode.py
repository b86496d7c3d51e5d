"""Transfer syntaxes on the way out: when a destination refuses how an object is encoded, send it uncompressed.

The router never compresses and never invents lossy encodings. The one change it makes is towards the
universal encodings every Storage SCP accepts: compressed Pixel Data is decoded (all frames) to Explicit
VR Little Endian, or Implicit VR Little Endian when that is all the destination takes; a deflated object
is inflated; Explicit and Implicit VR Little Endian are swapped for each other. Decoding does not make a
lossy image lossless: a lossy source stays marked LossyImageCompression "01".

Decoders (pydicom plugins), chosen for permissive licences (no GPL in the appliance image):
  python-gdcm           JPEG baseline/extended/lossless, JPEG-LS (and JPEG 2000 as a fallback)
  pylibjpeg-openjpeg    JPEG 2000 and HTJ2K (OpenJPEG 2.5, newer than the copy inside GDCM)
  pylibjpeg-rle         RLE (pydicom's own numpy RLE decoder is the fallback, ~25x slower)
pydicom's GDCM plugin refuses 12-bit JPEG Extended although GDCM decodes it (identically to DCMTK's
dcmdjpeg): a small plugin below gives pydicom that path.

Memory: pydicom decodes in memory. Peak ≈ the compressed Pixel Data + twice the uncompressed Pixel Data
(frames are gathered in one buffer, which pydicom then takes as bytes) + one decoded frame. A 512×512 CT
slice is 0.5 MB; a 2 000-frame 1024×1024 16-bit XA cine is 4 GB, which is also the most a native Pixel
Data element can hold, so anything larger is refused before decoding starts.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.valuerep import VR

LOG = logging.getLogger("router.transcode")

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"

# What `decompress` can produce: the two encodings every Storage SCP must accept, explicit first
# (it keeps the VR of private elements, which implicit encoding loses).
UNCOMPRESSED_TARGETS = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
POLICIES = ("decompress", "never")

# The largest native Pixel Data value: a 32-bit length, 0xFFFFFFFF being "undefined", and even.
_MAX_NATIVE_PIXEL_BYTES = 0xFFFFFFFE


class TranscodeFailed(Exception):
    """The object cannot be made acceptable to the destination; the message is meant for an operator."""


@dataclass(frozen=True)
class _Syntax:
    name: str
    # "no": always lossless; "maybe": lossless or lossy by encoder choice; "always": lossy by definition.
    lossy: str = "no"
    # Lossy Image Compression Method defined term (PS3.3 C.7.6.1.1.5.1), recorded when we mark it lossy.
    method: str | None = None


_NATIVE = {
    IMPLICIT_VR_LE: _Syntax("Implicit VR Little Endian"),
    EXPLICIT_VR_LE: _Syntax("Explicit VR Little Endian"),
    DEFLATED_EXPLICIT_VR_LE: _Syntax("Deflated Explicit VR Little Endian"),
    EXPLICIT_VR_BE: _Syntax("Explicit VR Big Endian (retired)"),
}

_ENCAPSULATED = {
    "1.2.840.10008.1.2.4.50": _Syntax("JPEG Baseline (lossy, 8-bit)", "always", "ISO_10918_1"),
    "1.2.840.10008.1.2.4.51": _Syntax("JPEG Extended (lossy, 12-bit)", "always", "ISO_10918_1"),
    "1.2.840.10008.1.2.4.57": _Syntax("JPEG Lossless (Process 14)"),
    "1.2.840.10008.1.2.4.70": _Syntax("JPEG Lossless SV1"),
    "1.2.840.10008.1.2.4.80": _Syntax("JPEG-LS Lossless"),
    "1.2.840.10008.1.2.4.81": _Syntax("JPEG-LS Near-Lossless", "maybe", "ISO_14495_1"),
    "1.2.840.10008.1.2.4.90": _Syntax("JPEG 2000 Lossless"),
    "1.2.840.10008.1.2.4.91": _Syntax("JPEG 2000", "maybe", "ISO_15444_1"),
    "1.2.840.10008.1.2.4.92": _Syntax("JPEG 2000 Part 2 Multi-component Lossless"),
    "1.2.840.10008.1.2.4.93": _Syntax("JPEG 2000 Part 2 Multi-component", "maybe", "ISO_15444_2"),
    "1.2.840.10008.1.2.4.94": _Syntax("JPIP Referenced", "maybe", "ISO_15444_1"),
    "1.2.840.10008.1.2.4.95": _Syntax("JPIP Referenced Deflate", "maybe", "ISO_15444_1"),
    "1.2.840.10008.1.2.4.100": _Syntax("MPEG2 Main Profile @ Main Level", "always", "ISO_13818_2"),
    "1.2.840.10008.1.2.4.100.1": _Syntax("MPEG2 Main Profile @ Main Level (fragmentable)", "always", "ISO_13818_2"),
    "1.2.840.10008.1.2.4.101": _Syntax("MPEG2 Main Profile @ High Level", "always", "ISO_13818_2"),
    "1.2.840.10008.1.2.4.101.1": _Syntax("MPEG2 Main Profile @ High Level (fragmentable)", "always", "ISO_13818_2"),
    "1.2.840.10008.1.2.4.102": _Syntax("MPEG-4 AVC/H.264 High Profile", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.102.1": _Syntax("MPEG-4 AVC/H.264 High Profile (fragmentable)", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.103": _Syntax("MPEG-4 AVC/H.264 BD-compatible", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.103.1": _Syntax("MPEG-4 AVC/H.264 BD-compatible (fragmentable)", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.104": _Syntax("MPEG-4 AVC/H.264 2D Video", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.104.1": _Syntax("MPEG-4 AVC/H.264 2D Video (fragmentable)", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.105": _Syntax("MPEG-4 AVC/H.264 3D Video", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.105.1": _Syntax("MPEG-4 AVC/H.264 3D Video (fragmentable)", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.106": _Syntax("MPEG-4 AVC/H.264 Stereo", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.106.1": _Syntax("MPEG-4 AVC/H.264 Stereo (fragmentable)", "always", "ISO_14496_10"),
    "1.2.840.10008.1.2.4.107": _Syntax("HEVC/H.265 Main Profile", "always", "ISO_23008_2"),
    "1.2.840.10008.1.2.4.108": _Syntax("HEVC/H.265 Main 10 Profile", "always", "ISO_23008_2"),
    "1.2.840.10008.1.2.4.110": _Syntax("JPEG XL Lossless"),
    "1.2.840.10008.1.2.4.111": _Syntax("JPEG XL JPEG Recompression", "always", "ISO_10918_1"),
    "1.2.840.10008.1.2.4.112": _Syntax("JPEG XL", "maybe", "ISO_18181_1"),
    "1.2.840.10008.1.2.4.201": _Syntax("HTJ2K Lossless"),
    "1.2.840.10008.1.2.4.202": _Syntax("HTJ2K Lossless RPCL"),
    "1.2.840.10008.1.2.4.203": _Syntax("HTJ2K", "maybe", "ISO_15444_15"),
    "1.2.840.10008.1.2.4.204": _Syntax("JPIP HTJ2K Referenced", "maybe", "ISO_15444_15"),
    "1.2.840.10008.1.2.4.205": _Syntax("JPIP HTJ2K Referenced Deflate", "maybe", "ISO_15444_15"),
    "1.2.840.10008.1.2.5": _Syntax("RLE Lossless"),
    "1.2.840.10008.1.2.1.98": _Syntax("Encapsulated Uncompressed Explicit VR Little Endian"),
    "1.2.840.10008.1.2.8.1": _Syntax("Deflated Image Frame Compression"),
}

_JPEG12_PLUGIN = "router-gdcm-12bit"  # registered at the end of this module

# pydicom decoding plugins in the order we trust them; any other installed plugin is tried after these.
_J2K = ("pylibjpeg", "gdcm")
_PREFERRED_PLUGINS = {
    "1.2.840.10008.1.2.4.50": ("gdcm",),
    JPEG_EXTENDED_12BIT: ("gdcm", _JPEG12_PLUGIN),
    "1.2.840.10008.1.2.4.57": ("gdcm",),
    "1.2.840.10008.1.2.4.70": ("gdcm",),
    "1.2.840.10008.1.2.4.80": ("gdcm",),
    "1.2.840.10008.1.2.4.81": ("gdcm",),
    "1.2.840.10008.1.2.4.90": _J2K,
    "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": _J2K,
    "1.2.840.10008.1.2.4.202": _J2K,
    "1.2.840.10008.1.2.4.203": _J2K,
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom"),
}


# -- what a transfer syntax is -----------------------------------------------------------------------


def describe_ts(ts: str) -> str:
    """'JPEG 2000 Lossless (1.2.840.10008.1.2.4.90)' — for messages an operator reads."""
    known = _NATIVE.get(ts) or _ENCAPSULATED.get(ts)
    return f"{known.name} ({ts})" if known else f"unknown transfer syntax {ts}"


def is_compressed(ts: str) -> bool:
    """True when Pixel Data in `ts` is encapsulated (compressed); an unknown (private) syntax counts as
    compressed, since nothing can be assumed about it. Deflate compresses the whole dataset, not the
    pixels, and is not counted: inflating it needs no pixel decoder."""
    return ts not in _NATIVE


def is_lossy(ts: str) -> bool:
    """True when `ts` can carry lossily compressed pixels (JPEG baseline/extended, JPEG 2000, JPEG-LS
    near-lossless, video, ...), whether or not this object's encoder used the lossy mode."""
    known = _ENCAPSULATED.get(ts)
    return known is not None and known.lossy != "no"


def can_decode(ts: str) -> bool:
    """True when `decompress` can turn an object stored in `ts` into Explicit/Implicit VR Little Endian."""
    if ts in (IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE):
        return True  # pydicom reads these natively (and inflates deflate on reading)
    if ts not in _ENCAPSULATED:
        return False  # big endian (pydicom will not swap it to little endian) or an unknown syntax
    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:  # pydicom has no decoder at all for this syntax (video, JPEG XL, ...)
        return False


def fallback_syntaxes(ts: str, policy: str) -> list[str]:
    """Transfer syntaxes to propose, besides `ts` itself, for an object stored in `ts`.

    With policy "decompress": the uncompressed syntaxes `decompress` can produce from `ts` (Explicit VR LE
    first); with "never": none. Never a lossy syntax — the router does not compress.
    """
    _check_policy(policy)
    if policy == "never" or not can_decode(ts):
        return []
    return [target for target in UNCOMPRESSED_TARGETS if target != ts]


def choose_syntax(stored_ts: str, accepted: Set[str], policy: str) -> str | None:
    """The transfer syntax to send an object stored in `stored_ts` in, given the syntaxes the destination
    accepted for its SOP class: as stored when accepted, else the first acceptable fallback, else None."""
    if stored_ts in accepted:
        return stored_ts
    return next((ts for ts in fallback_syntaxes(stored_ts, policy) if ts in accepted), None)


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"transcode policy must be one of {', '.join(POLICIES)}, not {policy!r}")


# -- decompressing --------------------------------------------------------------------------------------


def decompress(ds: Dataset, target_ts: str) -> None:
    """Re-encode `ds` in place for sending in `target_ts` (Explicit or Implicit VR Little Endian).

    Decodes compressed Pixel Data (all frames) and sets what the standard requires of native pixels:
    Photometric Interpretation as the decoder produced it (YBR_FULL_422 / YBR_ICT / YBR_RCT become RGB
    or YBR_FULL), Planar Configuration, no extended offset table; a lossy source stays (or becomes)
    LossyImageCompression "01". The SOP Instance UID is kept: a change of encoding is not a new object.
    Raises TranscodeFailed with the reason and the remedy.
    """
    if target_ts not in UNCOMPRESSED_TARGETS:
        raise TranscodeFailed(
            f"the router only converts to {describe_ts(EXPLICIT_VR_LE)} or {describe_ts(IMPLICIT_VR_LE)}, "
            f"not to {describe_ts(target_ts)} — it never compresses"
        )
    meta = ds.get("file_meta")
    source = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not source:
        raise TranscodeFailed(
            "the object has no Transfer Syntax UID in its file meta, so its encoding is unknown — "
            "it cannot be converted; re-send it from the modality"
        )
    if source == target_ts:
        return
    if not can_decode(source):
        raise TranscodeFailed(
            f"cannot convert {describe_ts(source)} to {describe_ts(target_ts)}: {_why_not(source)} — {_remedy(source)}"
        )
    # A file whose body is implicit VR under an explicit syntax (it happens) is read with no VRs, and
    # pydicom can only write it after every element has been given its VR from the dictionary.
    for _element in ds:
        pass
    if is_compressed(source):
        if "PixelData" in ds:
            _decode_pixel_data(ds, source)
        _decode_icons(ds, source)
        _mark_lossy(ds, source)
    meta.TransferSyntaxUID = target_ts
    # The dataset now *is* in the target encoding: pynetdicom's send_c_store(ds) refuses a dataset whose
    # original encoding disagrees with its file meta (explicit → implicit would).
    ds.set_original_encoding(target_ts == IMPLICIT_VR_LE, True, ds.original_character_set)


def _why_not(source: str) -> str:
    if source == EXPLICIT_VR_BE:
        return "the router does not convert the retired big endian encoding"
    if source not in _ENCAPSULATED:
        return "the router does not know this transfer syntax"
    return "no decoder for it is installed on this router"


def _remedy(source: str) -> str:
    name = _ENCAPSULATED.get(source, _NATIVE.get(source, _Syntax(source))).name
    return (
        f"enable {name} on the destination so the object can be sent as stored, or route such objects "
        f"with `transcode: never` to a destination that accepts {name}"
    )


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _native_frame_bytes(ds: Dataset) -> int:
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * (int(ds.BitsAllocated) // 8)


def _decode_pixel_data(ds: Dataset, source: str) -> None:
    """Replace encapsulated Pixel Data with native pixels; update the Image Pixel attributes."""
    try:
        bits_allocated = int(ds.BitsAllocated)
        frame_bytes = _native_frame_bytes(ds)
    except (AttributeError, TypeError, ValueError) as exc:
        raise TranscodeFailed(
            f"cannot decompress {describe_ts(source)}: the Image Pixel attributes are missing or invalid "
            f"({exc}) — {_remedy(source)}"
        ) from None
    if bits_allocated not in (8, 16, 32, 64):
        raise TranscodeFailed(
            f"cannot decompress {describe_ts(source)} with Bits Allocated {bits_allocated} — {_remedy(source)}"
        )
    frames = _number_of_frames(ds)
    total = frame_bytes * frames
    if total > _MAX_NATIVE_PIXEL_BYTES:
        raise TranscodeFailed(
            f"decompressing {describe_ts(source)} would give {total / 1e9:.1f} GB of pixels ({frames} frames), "
            f"more than an uncompressed DICOM object can hold (4 GB) — {_remedy(source)}"
        )
    # Colour conversion rounds: keep the decoder's own colour space for lossless pixels (YBR_FULL stays
    # YBR_FULL, exactly); convert lossy YCbCr to RGB, as DCMTK's dcmdjpeg does and every viewer reads.
    as_rgb = is_lossy(source) and ds.get("LossyImageCompression") != "00"
    pixels, image_pixel = _decode_frames(ds, source, frames, frame_bytes, as_rgb)

    elem = ds["PixelData"]
    elem.value = bytes(pixels)  # pydicom takes OB/OW values as bytes only (a bytearray becomes a list)
    del pixels
    elem.VR = VR.OB if bits_allocated <= 8 else VR.OW
    elem.is_undefined_length = False
    photometric = str(image_pixel.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    if photometric == "YBR_FULL_422":
        photometric = "YBR_FULL"  # decoders return full-resolution chroma; native 422 would mean subsampled
    if photometric:
        ds.PhotometricInterpretation = photometric
    if int(ds.get("SamplesPerPixel") or 1) > 1:
        ds.PlanarConfiguration = int(image_pixel.get("planar_configuration", 0))
    # Offsets into encapsulated fragments mean nothing for native pixels (PS3.3 C.7.6.3.1.8).
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)


def _decode_frames(
    ds: Dataset, source: str, frames: int, frame_bytes: int, as_rgb: bool
) -> tuple[bytearray, dict[str, Any]]:
    decoder = get_decoder(source)
    available = decoder.available_plugins
    preferred = [p for p in _PREFERRED_PLUGINS.get(source, ()) if p in available]
    errors = []
    for plugin in preferred + [p for p in available if p not in preferred]:
        try:
            return _decode_with(decoder, plugin, ds, frames, frame_bytes, as_rgb)
        except Exception as exc:  # decoders raise anything: RuntimeError, ValueError, struct.error, ...
            errors.append(_last_line(exc, plugin))
    detail = "; ".join(errors) or "no decoder installed"
    raise TranscodeFailed(
        f"decompressing {describe_ts(source)} failed ({detail}) — the compressed pixel data is damaged or uses "
        f"a feature the decoders do not support; {_remedy(source)}"
    )


def _last_line(exc: Exception, plugin: str) -> str:
    """pydicom wraps a plugin's error as '...all available plugins:\n  gdcm: <reason>'; keep the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    return reason if reason.startswith(f"{plugin}:") else f"{plugin}: {reason}"


def _decode_with(
    decoder: Any, plugin: str, ds: Dataset, frames: int, frame_bytes: int, as_rgb: bool
) -> tuple[bytearray, dict[str, Any]]:
    bits = int(ds.BitsAllocated)
    container = np.dtype(f"<{'i' if int(ds.get('PixelRepresentation') or 0) else 'u'}{bits // 8}")
    out = bytearray(frame_bytes * frames + (frame_bytes * frames) % 2)  # native values have even length
    image_pixel: dict[str, Any] = {}
    count = 0
    for array, frame_info in decoder.iter_array(ds, decoding_plugin=plugin, as_rgb=as_rgb):
        image_pixel = frame_info
        if count == frames:
            raise ValueError(f"more frames than Number of Frames ({frames})")
        if array.dtype.kind in "iu" and array.dtype.itemsize < container.itemsize:
            array = array.astype(container)  # e.g. 8-bit JPEG 2000 precision in a 16-bit container
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        if array.nbytes != frame_bytes:
            raise ValueError(f"a decoded frame has {array.nbytes} bytes, expected {frame_bytes}")
        out[count * frame_bytes : (count + 1) * frame_bytes] = array.data.cast("B")
        count += 1
    if count != frames:
        raise ValueError(f"decoded {count} frames, Number of Frames says {frames}")
    return out, image_pixel


def _decode_icons(ds: Dataset, source: str) -> None:
    """An Icon Image Sequence may hold encapsulated pixels too (PS3.5 A.4); native data must not.

    The icon is a Type 3 thumbnail: if it cannot be decoded it is dropped rather than failing the object.
    """
    for item in ds.get("IconImageSequence") or []:
        if "PixelData" not in item or not item["PixelData"].is_undefined_length:
            continue
        try:
            _decode_pixel_data(item, source)
        except TranscodeFailed as exc:
            LOG.warning("dropping the Icon Image Sequence while decompressing: %s", exc)
            del ds.IconImageSequence
            return


def _mark_lossy(ds: Dataset, source: str) -> None:
    """Once lossy, always marked lossy (PS3.3 C.7.6.1.1.5): after decoding, the transfer syntax no
    longer says so, the attribute must. An existing "01" and its ratio/method are kept untouched."""
    syntax = _ENCAPSULATED.get(source)
    if syntax is None or syntax.lossy == "no" or "PixelData" not in ds:
        return
    current = ds.get("LossyImageCompression")
    if current == "01" or (current == "00" and syntax.lossy == "maybe"):
        return  # marked lossy already, or the creator declared this lossless-capable codestream lossless
    # Absent (we cannot tell whether the encoder used its lossy mode, so say lossy), or "00" under a
    # syntax that is lossy by definition.
    ds.LossyImageCompression = "01"
    if syntax.method and "LossyImageCompressionMethod" not in ds:
        ds.LossyImageCompressionMethod = syntax.method


def installed_decoders() -> dict[str, list[str]]:
    """Decoders installed per compressed syntax, for a self-check or a support bundle."""
    status = {}
    for ts in _ENCAPSULATED:
        try:
            status[describe_ts(ts)] = list(get_decoder(ts).available_plugins)
        except NotImplementedError:
            status[describe_ts(ts)] = []
    return status


# -- 12-bit JPEG Extended through GDCM ---------------------------------------------------------------
# pydicom's GDCM plugin stops 12-bit JPEG Extended with "GDCM does not support"; GDCM does decode it (it
# first tries its 16-bit codec, prints "Unsupported JPEG data precision 12" to stderr, then uses the
# 12-bit one), and the result equals DCMTK dcmdjpeg's bit for bit (tests/integration/test_transcode_peer.py).
# The two module-level names below are pydicom's decoder-plugin protocol.

try:
    import gdcm as _gdcm
except ImportError:  # pragma: no cover - the appliance installs python-gdcm
    _gdcm = None

DECODER_DEPENDENCIES = {JPEG_EXTENDED_12BIT: ("gdcm>=3.0.10",)}


def is_available(uid: str) -> bool:
    """pydicom plugin protocol: can this module decode `uid` here?"""
    return uid == JPEG_EXTENDED_12BIT and _gdcm is not None


def _decode_jpeg12_frame(src: bytes, runner: Any) -> bytes:
    fragment = _gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = _gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = _gdcm.DataElement(_gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = _gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    pi_type = _gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(_gdcm.PhotometricInterpretation(pi_type))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    image.SetTransferSyntax(_gdcm.TransferSyntax(_gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    bits_stored = runner.bits_stored
    image.SetPixelFormat(
        _gdcm.PixelFormat(
            runner.samples_per_pixel, runner.bits_allocated, bits_stored, bits_stored - 1, runner.pixel_representation
        )
    )
    buffer = image.GetBuffer()
    if buffer is None:
        raise ValueError("GDCM could not decode the JPEG Extended frame")
    return bytes(buffer.encode("utf-8", "surrogateescape"))  # GDCM hands back char* as str


def _register_jpeg12_plugin() -> None:
    try:
        get_decoder(JPEG_EXTENDED_12BIT).add_plugin(_JPEG12_PLUGIN, (__name__, "_decode_jpeg12_frame"))
    except ValueError:  # registered already (a re-import)
        pass


_register_jpeg12_plugin()
