"""Uploaded datasets (sam_core.dataset_upload): the authors' schema checked record by record, zips checked before
anything is unpacked (unsafe names, links, encryption, sizes, member count) and while unpacking (data that does
not match its header), images checked by their headers, one-line messages, and a temporary folder that is gone
afterwards whatever happened."""

import json
import os
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from sam_core.data import MiniLinkConfig, write_split
from sam_core.dataset_upload import DatasetUploadError, UploadLimits, uploaded_dataset


@pytest.fixture
def dataset(tmp_path):
    """A 4-sample MiniLINK split in the authors' schema: (annotations path, records, image folder)."""
    annotations = write_split(tmp_path / "split", seed=2, size=4, config=MiniLinkConfig(min_images=2, max_images=3))
    return annotations, json.loads(annotations.read_text()), annotations.parent


def zip_images(path: Path, folder: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for image in sorted((folder / "images").iterdir()):
            archive.write(image, f"{prefix}images/{image.name}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def refused(annotations, images_zip, match: str, limits: UploadLimits = UploadLimits()):
    before = set(Path(tempfile.gettempdir()).glob("sam-dataset-*"))
    with pytest.raises(DatasetUploadError, match=match) as caught:
        with uploaded_dataset(annotations, images_zip, limits):
            pass
    assert "\n" not in str(caught.value)
    assert set(Path(tempfile.gettempdir()).glob("sam-dataset-*")) == before  # nothing left behind
    return str(caught.value)


def test_a_valid_upload_reads_like_the_original_and_is_removed_afterwards(dataset, tmp_path):
    annotations, records, folder = dataset
    for prefix in ("", "my-dataset/"):  # at the zip's top, or a zipped dataset folder
        with uploaded_dataset(annotations, zip_images(tmp_path / f"{len(prefix)}.zip", folder, prefix)) as upload:
            assert len(upload) == 4 and upload.num_images(0) == len(records[0]["img_list"])
            paths, prompt, answer, record = upload[0]
            assert prompt == records[0]["instruction"] and answer == records[0]["output"] and record["linked"]
            assert Image.open(paths[0]).tobytes() == Image.open(folder / records[0]["img_list"][0]).tobytes()
            root = upload.root
        assert not root.exists()


def test_the_folder_is_removed_when_the_evaluation_fails(dataset, tmp_path):
    annotations, _, folder = dataset
    with pytest.raises(RuntimeError):
        with uploaded_dataset(annotations, zip_images(tmp_path / "images.zip", folder)) as upload:
            root = upload.root
            raise RuntimeError("the model failed")
    assert not root.exists()


@pytest.mark.parametrize("change, match", [
    (lambda records: {"samples": records}, "must be a non-empty JSON list"),
    (lambda records: [], "must be a non-empty JSON list"),
    (lambda records: [{k: v for k, v in records[0].items() if k != "output"}], "Sample 1: missing output"),
    (lambda records: [{**records[0], "img_list": "images/a.png"}], r"Sample 1 \(id '2-0'\): img_list must be a non-empty list"),
    (lambda records: [{**records[0], "instruction": 3}], "instruction must be a non-empty string"),
    (lambda records: [{**records[0], "output": "  "}], "output must be a non-empty string"),
    (lambda records: [records[0], records[0]], "Sample 2: id '2-0' appears twice"),
    (lambda records: [{**records[0], "linked": ["red", "star"]}], "linked must be a string"),
    (lambda records: [{**records[0], "id": None}], "id must be a string or a whole number"),
    (lambda records: ["images/a.png"], "Sample 1: expected an object"),
])
def test_schema_errors_name_the_sample_and_the_field(dataset, tmp_path, change, match):
    annotations, records, folder = dataset
    refused(write_json(tmp_path / "bad.json", change(records)), zip_images(tmp_path / "images.zip", folder), match)


def test_not_json_and_too_many_samples_are_refused(dataset, tmp_path):
    annotations, records, folder = dataset
    images = zip_images(tmp_path / "images.zip", folder)
    (tmp_path / "broken.json").write_text('[{"id": 1,')
    refused(tmp_path / "broken.json", images, "not valid JSON")
    refused(annotations, images, "Too many samples: 4; at most 3", UploadLimits(max_samples=3))
    refused(annotations, images, r"Sample 1 \(id '2-0'\): 2 images; at most 1 per sample", UploadLimits(max_images_per_sample=1))
    refused(annotations, images, "annotations file is over 0 MB", UploadLimits(max_annotation_bytes=10))


def test_a_missing_image_is_named(dataset, tmp_path):
    annotations, records, folder = dataset
    records[2]["img_list"][1] = "images/not-there.png"
    message = refused(write_json(tmp_path / "a.json", records), zip_images(tmp_path / "images.zip", folder),
                      r"Sample 3 \(id '2-2'\): image 'images/not-there.png' is not in the zip")
    assert "it holds e.g. 'images/" in message


@pytest.mark.parametrize("name", ["../evil.png", "images/../../evil.png", "/etc/passwd", "C:/evil.png", "images\\evil.png"])
def test_paths_in_the_annotations_cannot_leave_the_upload(dataset, tmp_path, name):
    annotations, records, folder = dataset
    records[0]["img_list"][0] = name
    refused(write_json(tmp_path / "a.json", records), zip_images(tmp_path / "images.zip", folder), "image path .* (leaves|is absolute|backslash)")


@pytest.mark.parametrize("member", ["../evil.png", "images/../../evil.png", "/tmp/evil.png"])
def test_zip_members_that_would_land_outside_are_refused(dataset, tmp_path, member):
    annotations, _, folder = dataset
    images = zip_images(tmp_path / "images.zip", folder, extra={member: b"x"})
    refused(annotations, images, "Unsafe zip member")
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_symbolic_links_in_the_zip_are_refused(dataset, tmp_path):
    annotations, records, folder = dataset
    path = zip_images(tmp_path / "images.zip", folder)
    with zipfile.ZipFile(path, "a") as archive:
        link = zipfile.ZipInfo("images/link.png")
        link.create_system = 3  # unix
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    refused(annotations, path, "Unsafe zip member 'images/link.png': it is a symbolic link")


def test_zip_bombs_are_refused_by_declared_size_and_member_count(dataset, tmp_path):
    annotations, _, folder = dataset
    bomb = zip_images(tmp_path / "bomb.zip", folder, extra={"images/zeros.bin": bytes(8 * 2**20)})
    assert bomb.stat().st_size < 100_000  # 8 MB of zeros packs into a few KB
    refused(annotations, bomb, "unpacks to 8 MB; at most 1 MB per file", UploadLimits(max_member_bytes=2**20))
    refused(annotations, bomb, "unpacks to over 4 MB", UploadLimits(max_unpacked_bytes=4 * 2**20))
    refused(annotations, bomb, "The zip is over 0 MB", UploadLimits(max_archive_bytes=1000))
    refused(annotations, bomb, r"holds \d+ files; at most 3", UploadLimits(max_members=3))


def test_data_longer_than_its_header_declares_is_refused_unread(dataset, tmp_path):
    """A zip bomb that lies: its headers declare 1000 bytes for 8 MB of data. No more than the declared bytes
    are ever written, and the member is refused as damaged."""
    annotations, records, folder = dataset
    records[0]["img_list"][0] = "images/liar.png"
    path = zip_images(tmp_path / "liar.zip", folder, extra={"images/liar.png": bytes(8 * 2**20)})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("images/liar.png")
    data[member.header_offset + 22:member.header_offset + 26] = struct.pack("<I", 1000)  # local header: size
    central = data.rfind(b"PK\x01\x02" + data[member.header_offset + 4:member.header_offset + 6])
    while data[central + 46:central + 46 + len(member.filename)] != member.filename.encode():
        central = data.rfind(b"PK\x01\x02", 0, central)
    data[central + 24:central + 28] = struct.pack("<I", 1000)  # central directory: size
    path.write_bytes(bytes(data))
    refused(write_json(tmp_path / "a.json", records), path, "Zip member 'images/liar.png' is damaged")


def test_encrypted_members_are_refused(dataset, tmp_path):
    annotations, _, folder = dataset
    path = zip_images(tmp_path / "images.zip", folder)
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x1  # the first member's "encrypted" flag in the central directory
    path.write_bytes(bytes(data))
    refused(annotations, path, "is encrypted")


def test_files_that_are_not_images_are_refused(dataset, tmp_path):
    annotations, records, folder = dataset
    records[1]["img_list"][0] = "images/notes.png"
    images = zip_images(tmp_path / "images.zip", folder, extra={"images/notes.png": b"just some text"})
    refused(write_json(tmp_path / "a.json", records), images, r"Sample 2 \(id '2-1'\): 'images/notes.png' is not an image")
    huge = tmp_path / "huge.png"
    Image.new("1", (12_000, 12_000)).save(huge)  # 144 megapixels, a small file
    records[1]["img_list"][0] = "images/huge.png"
    images = zip_images(tmp_path / "huge.zip", folder, extra={"images/huge.png": huge.read_bytes()})
    refused(write_json(tmp_path / "b.json", records), images, "too large to decode safely")
    (tmp_path / "fake.zip").write_text("not a zip")
    refused(annotations, tmp_path / "fake.zip", "not a readable zip archive")


def test_the_time_budget_bounds_checking(dataset, tmp_path):
    annotations, _, folder = dataset
    refused(annotations, zip_images(tmp_path / "images.zip", folder), "took over 0 s", UploadLimits(seconds=0))


def test_nothing_is_written_outside_the_upload_folder(dataset, tmp_path, monkeypatch):
    annotations, _, folder = dataset
    monkeypatch.chdir(tmp_path)
    with uploaded_dataset(annotations, zip_images(tmp_path / "images.zip", folder)) as upload:
        written = {p for p in upload.root.rglob("*") if p.is_file()}
        assert all(os.path.commonpath([p, upload.root]) == str(upload.root) for p in written)
        assert len(written) == 1 + sum(len(upload.records[i]["img_list"]) for i in range(len(upload)))
