"""The demo's video catalog: HLS titles generated into an origin directory.

Rules it keeps:
- every title is ``titles/NNNN/master.m3u8`` with two renditions: ``hi/`` (one
  file per segment, ``hi/index.m3u8``) and ``lo/`` (every segment in one file,
  ``lo/index.ts``, addressed by ``#EXT-X-BYTERANGE`` in ``lo/index.m3u8``);
- with ffmpeg the segments are real H.264/AAC MPEG-TS (a test pattern and a
  tone, each title its own) and the media playlists are ffmpeg's; without it
  (or with ``synthetic=True``) segments are MPEG-TS null packets sized to the
  rendition's bitrate and the playlists come from the pure functions below;
- a title already generated with the same parameters is kept (a ``.done``
  marker written last), so a restarted demo does not encode again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TS_PACKET = 188
# A null packet (PID 0x1FFF): valid MPEG-TS that every demuxer skips.
NULL_PACKET = b"\x47\x1f\xff\x10" + b"\xff" * (TS_PACKET - 4)
PATTERNS = ("testsrc2", "smptehdbars", "rgbtestsrc", "testsrc", "smptebars", "yuvtestsrc")


@dataclass(frozen=True)
class Rendition:
    name: str
    width: int
    height: int
    video_bitrate: int  # bits/s
    audio_bitrate: int
    single_file: bool  # every segment in one file, addressed by byte ranges

    @property
    def bandwidth(self) -> int:
        return self.video_bitrate + self.audio_bitrate


RENDITIONS = (
    Rendition("hi", 640, 360, 800_000, 64_000, single_file=False),
    Rendition("lo", 320, 180, 250_000, 48_000, single_file=True),
)


@dataclass(frozen=True)
class Segment:
    duration: float
    uri: str
    byterange: tuple[int, int] | None = None  # (length, offset)


@dataclass(frozen=True)
class CatalogObject:
    key: str
    size: int
    title: int
    requests: int = 1  # requests one viewing makes for it: a byte-range file, one per segment


def title_prefix(n: int) -> str:
    return f"titles/{n:04d}"


def master_playlist(renditions: Sequence[Rendition]) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:4", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in sorted(renditions, key=lambda r: -r.bandwidth):
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={r.bandwidth},AVERAGE-BANDWIDTH={r.bandwidth},"
            f'RESOLUTION={r.width}x{r.height},CODECS="avc1.42c01e,mp4a.40.2"'
        )
        lines.append(f"{r.name}/index.m3u8")
    return "\n".join(lines) + "\n"


def media_playlist(segments: Sequence[Segment]) -> str:
    """A VOD media playlist; byte-range segments need version 4."""
    target = max((math.ceil(s.duration) for s in segments), default=1)
    version = 4 if any(s.byterange for s in segments) else 3
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{version}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
    ]
    for s in segments:
        lines.append(f"#EXTINF:{s.duration:.6f},")
        if s.byterange is not None:
            lines.append(f"#EXT-X-BYTERANGE:{s.byterange[0]}@{s.byterange[1]}")
        lines.append(s.uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def segment_durations(duration: float, segment: float) -> list[float]:
    """Whole segments of ``segment`` seconds, the last one shorter if need be
    (a remainder under a microsecond is no segment)."""
    n = max(1, math.ceil(duration / segment - 1e-6))
    return [segment] * (n - 1) + [duration - segment * (n - 1)]


def synthetic_size(rendition: Rendition, seconds: float) -> int:
    """Bytes of ``seconds`` at the rendition's bitrate, whole TS packets, at least one."""
    packets = max(1, round(rendition.bandwidth * seconds / 8 / TS_PACKET))
    return packets * TS_PACKET


def generate(
    origin: Path,
    titles: int = 4,
    duration: float = 30.0,
    segment: float = 2.0,
    synthetic: bool = False,
) -> tuple[list[CatalogObject], str]:
    """Write the catalog under ``origin``; return its objects and how it was made."""
    ffmpeg = None if synthetic else shutil.which("ffmpeg")
    kind = "ffmpeg" if ffmpeg else "synthetic"
    params = {"kind": kind, "duration": duration, "segment": segment, "version": 1}
    for n in range(1, titles + 1):
        root = origin / title_prefix(n)
        marker = root / ".done"
        if marker.exists() and json.loads(marker.read_text()) == params:
            continue
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        if ffmpeg:
            _encode(ffmpeg, root, n, duration, segment)
        else:
            _synthesize(root, duration, segment)
        (root / "master.m3u8").write_text(master_playlist(RENDITIONS))
        marker.write_text(json.dumps(params))
    return list_catalog(origin, titles), kind


def list_catalog(origin: Path, titles: int) -> list[CatalogObject]:
    objects = []
    for n in range(1, titles + 1):
        root = origin / title_prefix(n)
        # a single-file rendition's file is asked for once per segment of a viewing
        requests = {
            f"{r.name}/index.ts": max(
                1, (root / r.name / "index.m3u8").read_text().count("\nindex.ts")
            )
            for r in RENDITIONS
            if r.single_file
        }
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                rel = path.relative_to(root).as_posix()
                objects.append(
                    CatalogObject(
                        f"{title_prefix(n)}/{rel}", path.stat().st_size, n, requests.get(rel, 1)
                    )
                )
    return objects


def _synthesize(root: Path, duration: float, segment: float) -> None:
    for r in RENDITIONS:
        d = root / r.name
        d.mkdir()
        segments: list[Segment] = []
        offset = 0
        single_file = open(d / "index.ts", "wb") if r.single_file else None  # noqa: SIM115
        with single_file or contextlib.nullcontext() as single:
            for i, seconds in enumerate(segment_durations(duration, segment)):
                body = NULL_PACKET * (synthetic_size(r, seconds) // TS_PACKET)
                if single is not None:
                    single.write(body)
                    segments.append(Segment(seconds, "index.ts", (len(body), offset)))
                    offset += len(body)
                else:
                    name = f"seg_{i:05d}.ts"
                    (d / name).write_bytes(body)
                    segments.append(Segment(seconds, name))
        (d / "index.m3u8").write_text(media_playlist(segments))


def _encode(ffmpeg: str, root: Path, n: int, duration: float, segment: float) -> None:
    pattern = PATTERNS[(n - 1) % len(PATTERNS)]
    fps = 25
    gop = max(1, round(segment * fps))  # a keyframe at every segment boundary
    cmd = [
        ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        f"{pattern}=size=640x360:rate={fps}:duration={duration}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency={220 * n}:duration={duration}",
    ]
    for r in RENDITIONS:
        (root / r.name).mkdir()
        cmd += ["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast"]
        cmd += ["-s", f"{r.width}x{r.height}", "-b:v", str(r.video_bitrate)]
        cmd += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
        cmd += ["-c:a", "aac", "-b:a", str(r.audio_bitrate)]
        cmd += ["-f", "hls", "-hls_time", str(segment), "-hls_playlist_type", "vod"]
        if r.single_file:
            cmd += ["-hls_flags", "single_file"]
        else:
            cmd += ["-hls_segment_filename", str(root / r.name / "seg_%05d.ts")]
        cmd.append(str(root / r.name / "index.m3u8"))
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on title {n}: {done.stderr.strip()[-500:]}")
