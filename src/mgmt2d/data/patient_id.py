"""Patient (case) IDs that are safe as folder and file names.

An ID comes from the data (a case folder's name, a CSV cell) and ends up as a folder or file
name under an output folder, so it must be a plain name: ASCII letters, digits, ``-``, ``_``
and ``.``, not ``.`` or ``..``, at most 200 characters. Everything else (a slash, a space, a
leading ``..`` path, a non-ASCII letter whose spelling differs between file systems) is
refused with one line rather than quietly rewritten: two IDs must never collapse into one.
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
MAX_ID_CHARS = 200   # below the 255-byte name limit, leaving room for suffixes such as "_FLAIR_seg.nii.gz"


class PatientIdError(ValueError):
    """A patient ID that cannot be used as a folder name; the message is one line."""


def validate_patient_id(value: object, where: str = "") -> str:
    """``value`` as a patient ID usable as a folder name inside an output folder, or PatientIdError.

    ``where`` names its source for the message (a folder, "labels.csv row 7"). The ID is
    returned unchanged (no padding, no case folding): only numeric Kaggle IDs get padded, and
    that is the caller's rule, not this one's.
    """
    text = str(value)
    source = f" ({where})" if where else ""
    if text in ("", ".", ".."):
        problem = "is empty" if not text else "is not a folder name"
    elif len(text) > MAX_ID_CHARS:
        problem = f"is longer than {MAX_ID_CHARS} characters"
    elif not ID_PATTERN.fullmatch(text):
        bad = sorted({c for c in text if not ID_PATTERN.fullmatch(c)})
        problem = f"holds {' '.join(repr(c) for c in bad)}"
    else:
        return text
    raise PatientIdError(
        f"patient ID {text[:80]!r}{source} {problem}: an ID must be a plain folder name of ASCII letters, "
        "digits, '-', '_' and '.' (rename the case folder or fix the ID)"
    )
