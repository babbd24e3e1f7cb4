"""The byte scanner that splits a Group line agrees with a real JSON parser on any Group-shaped JSON."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atr_pipeline.publish.group_split import split_group

# Strings full of the characters a naive scanner trips on.
tricky_text = st.text(alphabet=st.sampled_from(list('ab"\\[]{}:,member \n\t\u00e9\u2028')), max_size=12)
leaf = st.one_of(tricky_text, st.integers(-5, 5), st.booleans(), st.none())
value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(tricky_text, inner, max_size=3)), max_leaves=8)
member = st.dictionaries(tricky_text, value, max_size=4).map(lambda d: {**d, "entity": {"reference": "Patient/x"}})
other_keys = st.dictionaries(tricky_text.filter(lambda k: k != "member"), value, max_size=4)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(head=other_keys, members=st.lists(member, max_size=6), position=st.integers(0, 5), pretty=st.booleans())
def test_split_matches_the_parser(head, members, position, pretty):
    items = list(head.items())
    items.insert(min(position, len(items)), ("member", members))
    obj = dict(items)
    data = json.dumps(obj, indent=1 if pretty else None, ensure_ascii=False).encode()
    split = split_group(data)
    assert [orjson.loads(split.member(i)) for i in range(len(split))] == members
    assert orjson.loads(split.head) == head


def test_member_word_as_a_value_or_nested_key_is_not_the_member_array():
    data = orjson.dumps({"resourceType": "Group", "name": "member", "x": {"member": [{"a": 1}]}, "member": [{"entity": {"reference": "Patient/1"}}]})
    split = split_group(data)
    assert len(split) == 1
    assert orjson.loads(split.head) == {"resourceType": "Group", "name": "member", "x": {"member": [{"a": 1}]}}


def test_group_without_members_and_bad_input():
    data = b'{"resourceType":"Group","id":"g"}'
    split = split_group(data)
    assert (len(split), split.head) == (0, data)
    with pytest.raises(ValueError, match="expected a JSON object"):
        split_group(b'[{"a":1}]')
    with pytest.raises(ValueError, match="non-object"):
        split_group(b'{"member":[1,2]}')
    with pytest.raises(ValueError, match="not a complete JSON object"):
        split_group(b'{"member":[{"a":1}]')
