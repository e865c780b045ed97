"""Delivery to a local folder: the copy is verified before it takes the final name."""

from __future__ import annotations

import json

import pytest

from clv_jobs.delivery import DeliveryError
from clv_jobs.delivery import local as local_delivery
from clv_jobs.settings import LocalDestination


def _destination(path) -> LocalDestination:
    return LocalDestination(type="local", path=str(path))


def test_the_file_then_its_manifest_arrive_with_the_published_bytes(tmp_path, make_datamodel):
    path, manifest = make_datamodel("acme", 200)
    outbox = tmp_path / "outbox"
    result = local_delivery.deliver(path, _destination(outbox), manifest)
    assert (outbox / path.name).read_bytes() == path.read_bytes()
    assert json.loads((outbox / f"{path.name}.manifest.json").read_text())["sha256"] == manifest["sha256"]
    assert result["path"] == str(outbox / path.name)
    assert sorted(p.name for p in outbox.iterdir()) == [path.name, f"{path.name}.manifest.json"]


def test_a_file_not_the_published_one_is_not_delivered(tmp_path, make_datamodel):
    path, manifest = make_datamodel("acme", 20)
    outbox = tmp_path / "outbox"
    with pytest.raises(DeliveryError, match="differs from the published one") as caught:
        local_delivery.deliver(path, _destination(outbox), manifest | {"sha256": "0" * 64})
    assert "acme" in str(caught.value)
    # Nothing under the final names, no manifest, no staged copy left behind.
    assert list(outbox.iterdir()) == []


def test_a_wrong_file_leaves_the_previous_delivery_in_place(tmp_path, make_datamodel):
    path, manifest = make_datamodel("acme", 20)
    outbox = tmp_path / "outbox"
    local_delivery.deliver(path, _destination(outbox), manifest)
    before = (outbox / path.name).read_bytes()
    with pytest.raises(DeliveryError):
        local_delivery.deliver(path, _destination(outbox), manifest | {"sha256": "f" * 64})
    assert (outbox / path.name).read_bytes() == before
    assert sorted(p.name for p in outbox.iterdir()) == [path.name, f"{path.name}.manifest.json"]
