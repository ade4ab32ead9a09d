"""The service-type catalogue is operator data: validated at start, with a message naming the entry."""

import json
from pathlib import Path

import pytest

from tsop_intake.catalogue import Catalogue, CatalogueError
from tsop_intake.main import IntakeSettings, build

BUILT_IN = json.loads((Path(__file__).parents[2] / "libs/events/src/tsop_events/service_types.json").read_text())


def variant(**changes: object) -> str:
    data = json.loads(json.dumps(BUILT_IN))
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return json.dumps(data)


def test_the_built_in_catalogue_has_every_family_and_kind() -> None:
    cat = Catalogue.load()
    families = {name.split(".")[0] for name in cat.types}
    assert families == {"fixed", "mobile", "broadband", "cloud", "customer"}
    assert cat.service_type_for("Bill Dispute") == cat.service_type_for("complaint") == "customer.complaint"
    assert cat.types["fixed.relocation"].required == ("location.address", "details.new_address")
    assert "information_deadline_passed" in cat.reason_codes.cancel


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("{", "not valid JSON"),
        (variant(reason_codes=None), "reason_codes"),
        (variant(types={}), "at least one service type"),
        (variant(types={"Fax": {"default_priority": 1, "resolve_hours": 1, "regions": ["*"]}}), "family.kind"),
        (variant(**{"types__fixed.installation__default_priority": 9}), "types.fixed.installation.default_priority"),
        (variant(**{"types__fixed.installation__required": ["location.street"]}), "location.street"),
        (variant(**{"types__fixed.installation__regions": []}), "regions"),
        (variant(**{"types__fixed.installation__colour": "red"}), "colour"),
        (variant(priority={"tiers": {"platinum": 3}}), "platinum"),
        (variant(reason_codes__cancel={}), "reason_codes.cancel"),
        (variant(limits={"customer_limit_action": "shout"}), "customer_limit_action"),
    ],
)
def test_a_bad_catalogue_is_refused_naming_the_entry(raw: str, complaint: str) -> None:
    with pytest.raises(CatalogueError, match=complaint):
        Catalogue.parse(raw, "ops.json")


def test_an_operator_file_replaces_the_built_in_one(tmp_path: Path) -> None:
    f = tmp_path / "types.json"
    f.write_text(variant(types={"fixed.repair": {"default_priority": 1, "resolve_hours": 4, "regions": ["x"],
                                                 "required": ["details.contract_id"]}}, ticket_types=None))
    cat = Catalogue.load(f)
    assert list(cat.types) == ["fixed.repair"] and cat.types["fixed.repair"].required == ("details.contract_id",)


def test_the_service_does_not_start_with_a_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="No such file"):
        build(IntakeSettings(service_types_file=tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(variant(**{"types__fixed.installation__resolve_hours": -1}))
    with pytest.raises(CatalogueError, match="resolve_hours"):
        build(IntakeSettings(service_types_file=bad))
