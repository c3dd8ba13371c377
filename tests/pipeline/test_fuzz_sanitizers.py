"""Property-based fuzzing (Hypothesis) of every metadata sanitizer and the sniffer
(issue 11, item 9): from real sample files, truncations, bit flips, byte runs inserted
or deleted and box/chunk/marker types swapped. Each input is sanitized cleanly or
refused with a 4xx media error; nothing else may escape (that would be a 500)."""

from __future__ import annotations

import importlib
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pipeline import samples
from vault.errors import MediaRejected
from vault.pipeline import sniff, strip_metadata

sniffing = importlib.import_module("vault.pipeline.sniff")  # the module (the package exports the function)

EXAMPLES = 400  # per format; bounded so the whole file runs in well under a minute


@cache
def seed(mime: str) -> bytes:
    return {
        "image/jpeg": lambda: samples.jpeg_with_everything(orientation=6),
        "image/png": lambda: samples.png_with_everything(orientation=6),
        "image/webp": lambda: samples.webp_with_everything(orientation=6),
        "image/heic": lambda: samples.heic_with_everything(orientation=6),
    }[mime]()


#: the structure names each format is made of, to swap one for another
NAMES = [b"ftyp", b"meta", b"iinf", b"iloc", b"iprp", b"ipma", b"mdat", b"Exif", b"idat", b"pitm", b"free",
         b"IHDR", b"IDAT", b"IEND", b"eXIf", b"tEXt", b"iTXt", b"zTXt", b"acTL", b"fcTL", b"fdAT",
         b"RIFF", b"WEBP", b"VP8 ", b"VP8L", b"VP8X", b"EXIF", b"XMP ", b"ANIM", b"ANMF", b"ALPH"]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "rename", "length"]))
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del out[at:at + draw(st.integers(1, 256))]
        elif kind == "rename":  # a structure's type swapped for another's
            names = [n for n in NAMES if n in out]
            if names:
                old = draw(st.sampled_from(names))
                where = out.find(old)
                out[where:where + 4] = draw(st.sampled_from(NAMES))
        else:  # a length/size field set to something absurd
            out[at:at + 4] = draw(st.sampled_from([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x00\x00\x00\x01", b"\x7f\xff\xff\xf0"]))
    return bytes(out)


def sanitize_or_refuse(mime: str, data: bytes) -> None:
    try:
        result = strip_metadata(mime, data)
    except MediaRejected as exc:
        assert 400 <= exc.status < 500
        return
    assert result is not None


@pytest.mark.parametrize("mime", ["image/jpeg", "image/png", "image/webp", "image/heic"])
def test_sanitizers_accept_cleanly_or_refuse_with_4xx(mime):
    @given(data=mutated(seed(mime)))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(data: bytes) -> None:
        sanitize_or_refuse(mime, data)

    check()


# Mutated sample files are large: Hypothesis warns when it renders their repr for a report.
KNOWN_TYPES = {sniffing.JPEG, sniffing.PNG, sniffing.WEBP, sniffing.HEIC, sniffing.HEIF, sniffing.HEIF_SEQUENCE,
               sniffing.AVIF, sniffing.GIF, sniffing.TIFF, sniffing.MP4, sniffing.QUICKTIME}


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@given(data=st.one_of(st.binary(max_size=512), mutated(seed("image/heic")), mutated(seed("image/webp"))))
@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_sniffer_never_raises_and_names_only_known_types(data):
    found = sniff(data[:256])
    # Every name the sniffer knows: the photo and video types the vault takes, and those it
    # names only to refuse them clearly (415: AVIF, GIF, TIFF, HEIF sequences).
    assert found is None or found in KNOWN_TYPES
