"""Datasets people upload for evaluation: an annotations JSON in the authors' schema plus a zip of its images,
checked before anything is unpacked and unpacked only into a fresh folder that is removed afterwards.

The authors' schema (McCartney01/SAM, test.py): a JSON list of {"id", "img_list", "instruction", "output"}, image
paths relative to the dataset's folder; ours also reads optional "task" and "linked" (task accuracy). The zip holds
those paths, either at its top or under one folder (a zipped dataset folder). Every refusal is one line that
says what to fix: a wrong schema, a missing or non-image file, too many samples, an unsafe member (absolute path,
`..`, a link, encryption), a zip bomb (declared sizes or member count over the limits; data that does not match
its declared size is refused as damaged).
"""

import json
import shutil
import stat
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from .data import AnnotationDataset

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
REQUIRED_FIELDS = ("id", "img_list", "instruction", "output")
CHUNK = 1 << 20


class DatasetUploadError(ValueError):
    """An upload refused, with a one-line message for the person who sent it."""


@dataclass(frozen=True)
class UploadLimits:
    """What one uploaded dataset may hold; checked before the expensive work."""

    max_samples: int = 500
    max_images_per_sample: int = 8
    max_annotation_bytes: int = 8 * 2**20
    max_archive_bytes: int = 200 * 2**20
    max_members: int = 10_000
    max_member_bytes: int = 32 * 2**20  # uncompressed, one file
    max_unpacked_bytes: int = 512 * 2**20  # uncompressed, all files
    seconds: float = 60.0  # reading, checking and unpacking together


def read_annotations(path: str | Path, limits: UploadLimits) -> list[dict]:
    """The records of an annotations file, or a DatasetUploadError naming the first problem."""
    path = Path(path)
    if path.stat().st_size > limits.max_annotation_bytes:
        raise DatasetUploadError(f"The annotations file is over {limits.max_annotation_bytes // 2**20} MB.")
    try:
        records = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetUploadError(f"The annotations file is not valid JSON ({error.__class__.__name__}).") from None
    if not isinstance(records, list) or not records:
        raise DatasetUploadError('The annotations must be a non-empty JSON list of {"id", "img_list", "instruction", "output"} records.')
    if len(records) > limits.max_samples:
        raise DatasetUploadError(f"Too many samples: {len(records)}; at most {limits.max_samples} per evaluation.")
    seen = set()
    for number, record in enumerate(records, start=1):
        check_record(record, number, limits)
        if str(record["id"]) in seen:
            raise DatasetUploadError(f"Sample {number}: id {record['id']!r} appears twice; ids must be unique.")
        seen.add(str(record["id"]))
    return records


def check_record(record, number: int, limits: UploadLimits) -> None:
    where = f"Sample {number}"
    if not isinstance(record, dict):
        raise DatasetUploadError(f"{where}: expected an object with {', '.join(REQUIRED_FIELDS)}; got {type(record).__name__}.")
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise DatasetUploadError(f"{where}: missing {', '.join(missing)} (the authors' schema: {', '.join(REQUIRED_FIELDS)}).")
    if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
        raise DatasetUploadError(f"{where}: id must be a string or a whole number.")
    where = f"Sample {number} (id {record['id']!r})"
    for name in ("instruction", "output"):
        if not isinstance(record[name], str) or not record[name].strip():
            raise DatasetUploadError(f"{where}: {name} must be a non-empty string.")
    for name in ("task", "linked"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise DatasetUploadError(f"{where}: {name} must be a string when given.")
    images = record["img_list"]
    if not isinstance(images, list) or not images or not all(isinstance(name, str) for name in images):
        raise DatasetUploadError(f"{where}: img_list must be a non-empty list of image paths.")
    if len(images) > limits.max_images_per_sample:
        raise DatasetUploadError(f"{where}: {len(images)} images; at most {limits.max_images_per_sample} per sample.")
    for name in images:
        problem = unsafe_path(name)
        if problem:
            raise DatasetUploadError(f"{where}: image path {name!r} {problem}.")


def unsafe_path(name: str) -> str | None:
    """Why a path cannot name a file inside the upload folder, or None if it can."""
    if not name or "\x00" in name:
        return "is empty or holds a NUL character"
    if "\\" in name:
        return "holds a backslash (use '/' between folders)"
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "is absolute (paths must be relative to the dataset's folder)"
    if ".." in path.parts:
        return "leaves the dataset's folder ('..')"
    return None


def check_archive(archive: zipfile.ZipFile, limits: UploadLimits) -> dict[str, zipfile.ZipInfo]:
    """Every member safe to unpack, within the limits by its declared sizes: {normalised name: member}."""
    members = archive.infolist()
    if len(members) > limits.max_members:
        raise DatasetUploadError(f"The zip holds {len(members)} files; at most {limits.max_members}.")
    files, total = {}, 0
    for member in members:
        problem = unsafe_path(member.filename.rstrip("/") if member.is_dir() else member.filename)
        if problem:
            raise DatasetUploadError(f"Unsafe zip member {member.filename!r}: it {problem}.")
        mode = member.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DatasetUploadError(f"Unsafe zip member {member.filename!r}: it is a symbolic link.")
        if member.flag_bits & 0x1:
            raise DatasetUploadError(f"Zip member {member.filename!r} is encrypted; upload an unencrypted zip.")
        if member.is_dir():
            continue
        if member.file_size > limits.max_member_bytes:
            raise DatasetUploadError(
                f"Zip member {member.filename!r} unpacks to {member.file_size / 2**20:.0f} MB; at most "
                f"{limits.max_member_bytes // 2**20} MB per file."
            )
        total += member.file_size
        if total > limits.max_unpacked_bytes:
            raise DatasetUploadError(f"The zip unpacks to over {limits.max_unpacked_bytes // 2**20} MB; that is the limit.")
        files[str(PurePosixPath(member.filename))] = member
    return files


def locate_images(records: list[dict], files: dict[str, zipfile.ZipInfo]) -> str:
    """The folder prefix under which the zip holds the annotations' paths: "" (at its top) or "folder/" (one
    folder around everything, as when a dataset folder is zipped). Names the first image it cannot find."""
    wanted = [(number, record, name) for number, record in enumerate(records, start=1) for name in record["img_list"]]
    tops = {name.split("/", 1)[0] for name in files if "/" in name}
    prefixes = [""] + ([f"{next(iter(tops))}/"] if len(tops) == 1 else [])
    found = {prefix: sum(prefix + str(PurePosixPath(name)) in files for _, _, name in wanted) for prefix in prefixes}
    prefix = max(prefixes, key=found.get)
    if found[prefix] == len(wanted):
        return prefix
    number, record, name = next((n, r, m) for n, r, m in wanted if prefix + str(PurePosixPath(m)) not in files)
    example = f" (it holds e.g. {next(iter(files))!r})" if files else " (it holds no files)"
    raise DatasetUploadError(f"Sample {number} (id {record['id']!r}): image {name!r} is not in the zip{example}.")


def unpack_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path, limits: UploadLimits,
                  budget: "Budget") -> int:
    """Copy one member out, counting the bytes actually produced; returns them."""
    written = 0
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a file of the same name as a folder on the path
        raise DatasetUploadError(f"Zip member {member.filename!r} clashes with another member's path.") from None
    try:
        with archive.open(member) as source, destination.open("wb") as target:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > min(member.file_size, limits.max_member_bytes):
                    raise DatasetUploadError(f"Zip member {member.filename!r} unpacks to more than it declares; refused.")
                target.write(chunk)
                budget.check()
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as error:
        raise DatasetUploadError(f"Zip member {member.filename!r} is damaged or uses an unsupported compression "
                                 f"({error.__class__.__name__}).") from None
    return written


def check_image(path: Path, shown_name: str, where: str) -> None:
    """The file's header says it is an image of a supported format and a decodable size (pixels are decoded
    later, by the evaluation, under the same limit)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with a clearer message
            with Image.open(path) as image:
                kind, pixels = image.format, image.width * image.height
    except Image.DecompressionBombError:
        kind, pixels = "", Image.MAX_IMAGE_PIXELS + 1
    except (UnidentifiedImageError, OSError):
        raise DatasetUploadError(f"{where}: {shown_name!r} is not an image ({', '.join(IMAGE_FORMATS)}).") from None
    if kind and kind not in IMAGE_FORMATS:
        raise DatasetUploadError(f"{where}: {shown_name!r} is a {kind} file; use {', '.join(IMAGE_FORMATS)}.")
    if pixels > Image.MAX_IMAGE_PIXELS:
        raise DatasetUploadError(f"{where}: {shown_name!r} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels).")


class Budget:
    """The upload's time limit, checked between steps."""

    def __init__(self, seconds: float):
        self.seconds, self.deadline = seconds, time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise DatasetUploadError(f"Checking the upload took over {self.seconds:g} s; upload a smaller dataset.")


@contextmanager
def uploaded_dataset(annotations: str | Path, images_zip: str | Path, limits: UploadLimits = UploadLimits()
                     ) -> Iterator[AnnotationDataset]:
    """The upload as an AnnotationDataset in a fresh temporary folder (only the images the annotations name,
    under their validated names), removed when the block ends, whatever happens in it."""
    budget = Budget(limits.seconds)
    records = read_annotations(annotations, limits)
    images_zip = Path(images_zip)
    if images_zip.stat().st_size > limits.max_archive_bytes:
        raise DatasetUploadError(f"The zip is over {limits.max_archive_bytes // 2**20} MB.")
    folder = Path(tempfile.mkdtemp(prefix="sam-dataset-"))
    try:
        try:
            archive = zipfile.ZipFile(images_zip)
        except (zipfile.BadZipFile, OSError):
            raise DatasetUploadError("The images file is not a readable zip archive.") from None
        with archive:
            files = check_archive(archive, limits)
            prefix = locate_images(records, files)
            unpacked = {}
            for number, record in enumerate(records, start=1):
                for name in record["img_list"]:
                    key = str(PurePosixPath(name))
                    if key in unpacked:
                        continue
                    target = folder / "images" / key
                    unpack_member(archive, files[prefix + key], target, limits, budget)
                    check_image(target, name, f"Sample {number} (id {record['id']!r})")
                    unpacked[key] = target
                    budget.check()
        clean = [{**record, "img_list": [f"images/{PurePosixPath(name)}" for name in record["img_list"]]} for record in records]
        (folder / "annotations.json").write_text(json.dumps(clean))
        yield AnnotationDataset(folder / "annotations.json")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
