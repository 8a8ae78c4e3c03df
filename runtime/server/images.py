"""Pictures in chat requests: `image_url` parts as data URLs (`data:image/png;base64,...`).

The server fetches nothing from the network: a remote URL is refused with a 400 that says how to
send the picture inline. The bytes are checked for size and base64 here; whether they are a
picture libmtmd can decode is checked when the request runs (one 400 naming the part)."""

from __future__ import annotations

import base64
import binascii
import re

from qwythos.runtime.server.backend import MAX_IMAGE_BYTES
from qwythos.runtime.server.errors import bad_request

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+(?:=[\w.+-]+)?)*),", re.A)


def decode_image_url(url: str, where: str) -> bytes:
    """The picture's bytes from a data URL; remote and malformed URLs are one 400 each."""
    if re.match(r"(?i)(https?|ftp|file)://", url):
        raise bad_request(
            f"'{where}' is a remote URL; this server does not fetch images. Send the picture inline as "
            "a data URL: data:image/png;base64,<the file's bytes in base64>",
            where,
            "remote_image_url",
        )
    m = _DATA_URL.match(url)
    if m is None or ";base64" not in m.group(2):
        raise bad_request(
            f"'{where}' must be a base64 data URL (data:image/png;base64,...)", where, "invalid_value"
        )
    if m.group(1) and not m.group(1).startswith("image/"):
        raise bad_request(f"'{where}' holds {m.group(1)}, not an image", where, "invalid_value")
    payload = url[m.end() :]
    if len(payload) // 4 * 3 > MAX_IMAGE_BYTES:
        raise bad_request(f"'{where}' is larger than {MAX_IMAGE_BYTES >> 20} MiB", where, "image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"'{where}' is not valid base64", where, "invalid_value") from None
    if not data:
        raise bad_request(f"'{where}' holds an empty image", where, "invalid_value")
    return data
