import pytest

from vault import ids
from vault.errors import InvalidArgument

REGIONS = frozenset({"cn", "us", "de", "ru", "sg"})


def test_new_ids_carry_region_and_kind() -> None:
    sid = ids.new_subject_id("de")
    rid = ids.new_record_id("us")
    assert sid.startswith("de_sub_") and len(sid) == 33
    assert rid.startswith("us_rec_")
    assert ids.parse_id(sid, "sub", field="subject_id", regions=REGIONS).region == "de"
    assert ids.new_subject_id("de") != sid


@pytest.mark.parametrize(
    "value",
    [
        "",
        "de_sub_",
        "de_sub_short",
        "xx_sub_" + "a" * 26,  # unknown region
        "de_rec_" + "a" * 26,  # wrong kind
        "DE_sub_" + "a" * 26,
        "de_sub_" + "a" * 25 + "1",  # 1 is not base32
        "de_sub_" + "a" * 27,
        "de_sub_" + "a" * 26 + "\n",
    ],
)
def test_malformed_subject_ids_are_rejected(value: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        ids.parse_id(value, "sub", field="subject_id", regions=REGIONS)
    assert e.value.violations[0].field == "subject_id"
