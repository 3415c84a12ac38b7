"""Every validation rule: its error names the file, the row, the column and the fix."""

import pytest

from crossrec import schema
from crossrec.config import DataConfig
from crossrec.data.loaders import load_dataset
from crossrec.errors import DataError

from conftest import GOOD_INTERACTIONS, GOOD_ITEMS


def load(write, interactions=GOOD_INTERACTIONS, items=GOOD_ITEMS, **options):
    i = write("interactions.csv", interactions)
    it = write("items.csv", items)
    return load_dataset(DataConfig(interactions=str(i), items=str(it), **options))


def problems(write, **kwargs) -> list[str]:
    with pytest.raises(DataError) as info:
        load(write, **kwargs)
    return [str(p) for p in info.value.problems]


def test_good_input_loads_in_the_canonical_schema(write):
    data = load(write, text_template="{title}. {categories}")
    inter = data.interactions
    assert list(inter[schema.USER_ID]) == ["u1", "u1", "u2"]
    assert inter[schema.TIMESTAMP].tolist() == [1700000000, 1700000100, 1704067200]  # ISO 8601 -> epoch s
    assert inter[schema.RATING].dtype == "float64"
    assert data.items.set_index(schema.ITEM_ID).loc["b1", schema.TEXT] == "The Last Nebula. Science Fiction"


def test_missing_column_names_the_close_match_and_the_mapping(write):
    (msg,) = problems(write, interactions=GOOD_INTERACTIONS.replace("user_id", "userId", 1))
    assert "interactions.csv, column 'user_id': missing required column 'user_id'" in msg
    assert "fix: rename column 'userId' to 'user_id', or map it: data.columns.user_id: userId" in msg
    assert "(CLI: --column user_id=userId)" in msg


def test_column_mapping_renames_source_columns(write):
    data = load(write, interactions=GOOD_INTERACTIONS.replace("user_id", "userId", 1),
                columns={"user_id": "userId"})
    assert set(data.interactions[schema.USER_ID]) == {"u1", "u2"}


def test_mapping_to_a_column_that_does_not_exist(write):
    msgs = problems(write, interactions=GOOD_INTERACTIONS.replace("user_id", "userId", 1),
                    columns={"user_id": "uid"})
    assert any("the column mapping says 'user_id' comes from column 'uid', which the interactions file "
               "does not have" in m for m in msgs)


def test_missing_order_column(write):
    text = "user_id,item_id,domain\nu1,b1,books\n"
    (msg,) = problems(write, interactions=text)
    assert "missing an order column: need 'timestamp' (epoch seconds or ISO 8601) or 'seq_pos'" in msg


def test_null_ids_name_row_and_line(write):
    text = GOOD_INTERACTIONS + ",b1,books,1700000200,4\n"
    (msg,) = problems(write, interactions=text)
    assert "interactions.csv, row 4 (line 5), column 'user_id': user_id is empty" in msg
    assert "fix: give every row a user_id, or delete the row" in msg


def test_unknown_item_is_an_error_by_default(write):
    text = GOOD_INTERACTIONS + "u3,b9,books,1700000200,4\n"
    (msg,) = problems(write, interactions=text)
    assert "row 4 (line 5), column 'item_id': item 'b9' of domain 'books' is not in the items table" in msg
    assert "set data.unknown_items: drop (CLI: --unknown-items drop)" in msg


def test_unknown_items_can_be_dropped_and_counted(write):
    text = GOOD_INTERACTIONS + "u3,b9,books,1700000200,4\nu3,b8,books,1700000300,4\n"
    data = load(write, interactions=text, unknown_items="drop")
    assert len(data.interactions) == 3
    assert data.report.dropped_unknown_items == 2
    assert "2 interactions referenced unknown items and were dropped" in data.report.notes


def test_same_item_id_in_two_domains_is_two_items(write):
    items = GOOD_ITEMS + "b1,movies,A Film Called B1,Drama\n"
    text = GOOD_INTERACTIONS + "u3,b1,movies,1700000200,4\n"
    data = load(write, interactions=text, items=items)
    assert len(data.items) == 3


def test_empty_item_text(write):
    items = GOOD_ITEMS + "x1,books,   ,Fantasy\n"
    (msg,) = problems(write, items=items)
    assert "items.csv, row 3 (line 4), column 'title': item 'x1' (books) has no text" in msg
    assert "fix: give every item a non-empty title/text, or remove the item" in msg


def test_one_item_with_two_texts(write):
    items = GOOD_ITEMS + "b1,books,Another Title,Science Fiction\n"
    (msg,) = problems(write, items=items)
    assert ("items.csv, row 3 (line 4), column 'item_id': item 'b1' (books) has text 'Another Title' here "
            "but 'The Last Nebula' in row 1") in msg


def test_identical_duplicate_items_are_merged_and_reported(write):
    data = load(write, items=GOOD_ITEMS + "b1,books,The Last Nebula,Science Fiction\n")
    assert len(data.items) == 2
    assert data.report.dropped_duplicate_items == 1


def test_rating_that_is_not_a_number(write):
    text = GOOD_INTERACTIONS + "u3,b1,books,1700000200,five\n"
    (msg,) = problems(write, interactions=text)
    assert "row 4 (line 5), column 'rating': rating 'five' is not a number" in msg


def test_unparsable_timestamp(write):
    text = GOOD_INTERACTIONS + "u3,b1,books,last tuesday,4\n"
    (msg,) = problems(write, interactions=text)
    assert "row 4 (line 5), column 'timestamp': timestamp 'last tuesday' is not a time" in msg
    assert "fix: use epoch seconds (e.g. 1700000000) or ISO 8601" in msg


@pytest.mark.parametrize("row, column, message", [
    ("u3,b1,books,inf,4", "timestamp", "timestamp 'inf' is not a finite time"),
    ("u3,b1,books,1e300,4", "timestamp", "timestamp '1e300' is not a finite time"),
    ("u3,b1,books,1700000200,inf", "rating", "rating 'inf' is not a finite number"),
    ("u3,b1,books,1700000200,-1e300", "rating", "rating '-1e300' is not a finite number"),
])
def test_non_finite_or_absurd_numbers_name_their_cell(write, row, column, message):
    (msg,) = problems(write, interactions=GOOD_INTERACTIONS + row + "\n")
    assert f"row 4 (line 5), column '{column}': {message}" in msg


@pytest.mark.parametrize("weight", ["1e300", "inf", "nan"])
def test_absurd_weights_are_refused_before_they_reach_training(write, weight):
    text = "user_id,item_id,domain,timestamp,weight\nu1,b1,books,1,1\nu1,m1,movies,2," + weight + "\n"
    msgs = problems(write, interactions=text)
    assert any("row 2 (line 3), column 'weight'" in m for m in msgs), msgs


def test_truncated_gzip_is_a_clear_error(tmp_path, write):
    import gzip

    whole = gzip.compress((GOOD_INTERACTIONS * 50).encode())
    (tmp_path / "interactions.csv.gz").write_bytes(whole[:len(whole) // 2])
    items = write("items.csv", GOOD_ITEMS)
    with pytest.raises(DataError, match="cannot read interactions file: Compressed file ended"):
        load_dataset(DataConfig(interactions=str(tmp_path / "interactions.csv.gz"), items=str(items)))


def test_a_json_file_may_hold_one_array_of_objects(write):
    rows = '[{"user_id": "u1", "item_id": "b1", "domain": "books", "timestamp": 1}, ' \
           '{"user_id": "u1", "item_id": "m1", "domain": "movies", "timestamp": 2}]'
    data = load_dataset(DataConfig(interactions=str(write("interactions.json", rows)),
                                   items=str(write("items.csv", GOOD_ITEMS))))
    assert data.interactions[schema.ITEM_ID].tolist() == ["b1", "m1"]
    bad = write("bad.json", '[{"user_id": "u1"}, 7]')
    with pytest.raises(DataError, match="row 2: interactions file: element 2 of the JSON array is not an object"):
        load_dataset(DataConfig(interactions=str(bad), items=str(write("items.csv", GOOD_ITEMS))))


def test_domain_with_interactions_but_no_items(write):
    text = GOOD_INTERACTIONS + "u3,k1,kitchen,1700000200,4\n"
    (msg,) = problems(write, interactions=text)
    assert "items.csv, column 'domain': domain 'kitchen' has 1 interactions but no items" in msg
    assert "domains with items: books, movies" in msg


def test_empty_file(write):
    (msg,) = problems(write, interactions="")
    assert "interactions.csv: interactions file is empty" in msg
    (msg,) = problems(write, items="item_id,domain,title\n")
    assert "items.csv: items file has no data rows" in msg


def test_template_field_missing_from_items(write):
    (msg,) = problems(write, text_template="{title}. {description}")
    assert "the text template '{title}. {description}' uses '{description}', but the items have no column " \
           "'description'" in msg


def test_many_bad_rows_are_counted_not_all_listed(write):
    text = GOOD_INTERACTIONS + "".join(f"u{i},b1,books,1700000200,bad\n" for i in range(9))
    msgs = problems(write, interactions=text)
    assert len(msgs) == 6
    assert "... and 4 more rows with the same problem" in msgs[-1]


def test_all_problems_are_reported_together(write):
    text = GOOD_INTERACTIONS + ",b1,books,whenever,x\n"
    msgs = problems(write, interactions=text)
    assert {m.split("column '")[1].split("'")[0] for m in msgs} == {"user_id", "timestamp", "rating"}
    assert all("row 4 (line 5)" in m for m in msgs)


def test_a_missing_column_is_never_told_to_come_from_a_column_with_a_meaning_of_its_own(write):
    """A file without `domain` once got "rename column 'rating' to 'domain'"."""
    no_domain = "user_id,item_id,timestamp,rating\nu1,b1,1700000000,5\n"
    msgs = problems(write, interactions=no_domain)
    (msg,) = [m for m in msgs if "missing required column 'domain'" in m]
    assert "rating" not in msg.split("fix:")[1]
    assert "fix: add the column, or map an existing one: data.columns.domain: <column>" in msg


def test_items_without_title_point_to_the_text_template_flag(write):
    """Items without `title` once got "rename 'item_id' to 'title'"; the fix is the template."""
    (msg,) = problems(write, items="item_id,domain,name\nb1,books,The Last Nebula\nm1,movies,Orbit\n")
    assert "uses '{title}', but the items have no column 'title'" in msg
    assert "item_id" not in msg.split("fix:")[1]
    assert "data.text_template (CLI: --text-template), e.g. '{<column>}'" in msg


def test_ids_domains_and_texts_have_size_limits(write):
    """A 50 MB user_id once validated and trained; the message names the size, not the value."""
    long_id = "u" * 300_000
    msgs = problems(write, interactions=GOOD_INTERACTIONS.replace("u2,", f"{long_id},", 1),
                    items=GOOD_ITEMS.replace("The Last Nebula", "word " * 20_000, 1))
    (id_msg,) = [m for m in msgs if "user_id is" in m]
    assert "user_id is 300,000 characters long (at most 256)" in id_msg and "map each long value" in id_msg
    assert len(id_msg) < 1_000  # the value itself is not quoted back
    (text_msg,) = [m for m in msgs if "has a text of" in m]
    assert "at most 65,536" in text_msg and len(text_msg) < 1_000
