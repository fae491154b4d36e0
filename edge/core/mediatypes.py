"""Content-Type by file extension for what video players fetch.

Used when the origin names no type. Python's ``mimetypes`` depends on the
host's /etc/mime.types and misses most streaming formats, so the table is ours.
"""

from __future__ import annotations

import posixpath

TYPES: dict[str, str] = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m3u": "audio/mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".cmfv": "video/mp4",
    ".cmfa": "audio/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".aac": "audio/aac",
    ".mp3": "audio/mpeg",
    ".ac3": "audio/ac3",
    ".ec3": "audio/eac3",
    ".vtt": "text/vtt",
    ".webvtt": "text/vtt",
    ".srt": "application/x-subrip",
    ".ttml": "application/ttml+xml",
    ".dfxp": "application/ttml+xml",
    ".key": "application/octet-stream",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".json": "application/json",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".js": "text/javascript",
}

DEFAULT = "application/octet-stream"


def guess_type(key: str) -> str:
    return TYPES.get(posixpath.splitext(key)[1].lower(), DEFAULT)
